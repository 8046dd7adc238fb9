"""LoRA training, stacking on a frozen adapter, in-memory merging and generation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mta.base_model import DEFAULT_TARGET_MODULES, linear_shapes, load_base_model
from mta.errors import MtaError, ShapeMismatchError
from mta.inference import apply_adapter, generate
from mta.lora import LoraAdapter, LoraModule
from mta.training import TrainConfig, train_lora
from tests.fixtures_model import random_adapter

EXAMPLES = [
    ("Review: a funny film about two friends on a road trip. Tag:", " comedy"),
    ("Review: ghosts haunt an old house at night. Tag:", " horror"),
    ("Review: robots travel to a distant planet. Tag:", " science fiction"),
    ("Review: two strangers fall in love in Paris. Tag:", " romance"),
    ("Review: a detective chases a killer through the city. Tag:", " thriller"),
    ("Review: a family of animated toys comes to life. Tag:", " animation"),
    ("Review: the true story of a famous scientist. Tag:", " documentary"),
    ("Review: a wizard and a dragon fight for a kingdom. Tag:", " fantasy"),
]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Clone of every parameter and buffer."""
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def assert_bit_identical(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    """The model's tensors equal ``before`` bit for bit and no hooks remain."""
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [name for name, t in after.items() if not torch.equal(t, before[name])]
    assert changed == []
    hooked = [name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooked == []


def reference_loss(model: torch.nn.Module, tokenizer, examples) -> float:
    """Mean target-token (+EOS) cross-entropy, one unpadded example at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, target in examples:
            prompt_ids = tokenizer(prompt)["input_ids"]
            target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
            target_ids = [*target_ids, tokenizer.eos_token_id]
            ids = torch.tensor([prompt_ids + target_ids])
            logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
            total += float(
                torch.nn.functional.cross_entropy(logits, torch.tensor(target_ids), reduction="sum")
            )
            count += len(target_ids)
    return total / count


def fast_config(**overrides: object) -> TrainConfig:
    """A config that learns visibly on the tiny model within a few steps."""
    values = {"rank": 4, "lr": 1e-2, "batch_size": 4, "epochs": 10}
    values.update(overrides)
    return TrainConfig(**values)


def test_loss_falls_over_twenty_steps(tiny_model: tuple) -> None:
    model, tokenizer = tiny_model
    adapter, losses = train_lora(model, tokenizer, EXAMPLES, fast_config(), progress=False)
    assert len(losses) == 20  # 8 examples / batch 4 = 2 steps per epoch, 10 epochs
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5
    assert all(torch.isfinite(torch.tensor(losses)))
    adapter.check_finite()


def test_adapter_has_configured_rank_scale_and_targets(tiny_model: tuple) -> None:
    model, tokenizer = tiny_model
    config = fast_config(rank=3, epochs=1, target_modules=["q_proj", "v_proj"])
    adapter, _ = train_lora(model, tokenizer, EXAMPLES, config, progress=False)
    assert adapter.target_modules() == ["q_proj", "v_proj"]
    assert set(adapter.ranks().values()) == {3}
    assert len(adapter.modules) == 4
    module = adapter.modules["model.layers.0.self_attn.v_proj"]
    assert module.scale == 2.0  # alpha defaults to 2 * rank
    assert module.A.shape == (3, 64) and module.B.shape == (32, 3)
    custom, _ = train_lora(
        model, tokenizer, EXAMPLES, fast_config(rank=4, alpha=2, epochs=1), progress=False
    )
    assert next(iter(custom.modules.values())).scale == 0.5


def test_training_is_deterministic_for_a_seed(tiny_model: tuple) -> None:
    model, tokenizer = tiny_model
    config = fast_config(epochs=3)
    first, first_losses = train_lora(model, tokenizer, EXAMPLES, config, progress=False)
    second, second_losses = train_lora(model, tokenizer, EXAMPLES, config, progress=False)
    other, _ = train_lora(model, tokenizer, EXAMPLES, fast_config(epochs=3, seed=1), progress=False)
    assert first_losses == second_losses
    for path, module in first.modules.items():
        assert torch.equal(module.A, second.modules[path].A)
        assert torch.equal(module.B, second.modules[path].B)
    path = "model.layers.0.self_attn.q_proj"
    assert not torch.equal(first.modules[path].A, other.modules[path].A)


def test_returned_delta_is_what_was_trained(tiny_model: tuple) -> None:
    # Full-batch steps: the loss logged at step n+1 is the loss of the adapter after n steps.
    model, tokenizer = tiny_model
    config = fast_config(batch_size=len(EXAMPLES), epochs=5)
    adapter, _ = train_lora(model, tokenizer, EXAMPLES, config, progress=False)
    _, longer = train_lora(
        model, tokenizer, EXAMPLES, fast_config(batch_size=8, epochs=6), progress=False
    )
    with apply_adapter(model, adapter):
        merged = reference_loss(model, tokenizer, EXAMPLES)
    assert merged == pytest.approx(longer[5], abs=1e-4)
    assert merged < longer[0] - 0.1


def test_gradient_accumulation_equals_the_big_batch(tiny_model: tuple) -> None:
    model, tokenizer = tiny_model
    big, big_losses = train_lora(model, tokenizer, EXAMPLES, fast_config(epochs=2), progress=False)
    acc, acc_losses = train_lora(
        model,
        tokenizer,
        EXAMPLES,
        fast_config(epochs=2, batch_size=2, grad_accum=2),
        progress=False,
    )
    assert acc_losses == pytest.approx(big_losses, abs=1e-5)
    for path, module in big.modules.items():
        torch.testing.assert_close(module.B, acc.modules[path].B, atol=1e-5, rtol=1e-4)


def test_max_steps_and_on_step_callback(tiny_model: tuple) -> None:
    model, tokenizer = tiny_model
    seen: list[tuple[int, float]] = []
    _, losses = train_lora(
        model,
        tokenizer,
        EXAMPLES,
        fast_config(max_steps=3),
        progress=False,
        on_step=lambda step, loss: seen.append((step, loss)),
    )
    assert len(losses) == 3
    assert seen == list(enumerate(losses, start=1))


def test_truncation_keeps_targets_trainable(tiny_model: tuple) -> None:
    model, tokenizer = tiny_model
    long_examples = [("word " * 200 + prompt, target) for prompt, target in EXAMPLES]
    long_examples.append(("short", " a target far longer than the limit " * 5))
    _, losses = train_lora(
        model, tokenizer, long_examples, fast_config(epochs=1, max_length=24), progress=False
    )
    assert all(torch.isfinite(torch.tensor(losses)))


def test_stacking_leaves_frozen_and_base_unchanged(
    tiny_model: tuple, random_adapter_factory: Callable[..., LoraAdapter]
) -> None:
    model, tokenizer = tiny_model
    fused = random_adapter_factory(8, seed=1)
    fused_before = {p: (m.A.clone(), m.B.clone(), m.scale) for p, m in fused.modules.items()}
    before = snapshot(model)
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}

    stack, losses = train_lora(
        model, tokenizer, EXAMPLES, fast_config(rank=1), frozen=fused, progress=False
    )

    assert_bit_identical(model, before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads_before
    assert not model.training
    for path, (a, b, scale) in fused_before.items():
        assert torch.equal(fused.modules[path].A, a)
        assert torch.equal(fused.modules[path].B, b)
        assert fused.modules[path].scale == scale
    assert set(stack.ranks().values()) == {1}
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3


def test_stack_trains_on_top_of_the_fused_delta(
    tiny_model: tuple, random_adapter_factory: Callable[..., LoraAdapter]
) -> None:
    # B starts at zero, so the first logged loss is the loss of base + fused alone.
    model, tokenizer = tiny_model
    fused = random_adapter_factory(8, seed=2, std=0.2)
    config = fast_config(rank=1, batch_size=len(EXAMPLES), epochs=1)
    _, stacked = train_lora(model, tokenizer, EXAMPLES, config, frozen=fused, progress=False)
    _, plain = train_lora(model, tokenizer, EXAMPLES, config, progress=False)
    with apply_adapter(model, fused):
        fused_loss = reference_loss(model, tokenizer, EXAMPLES)
    assert stacked[0] == pytest.approx(fused_loss, abs=1e-4)
    assert abs(stacked[0] - plain[0]) > 1e-3


@pytest.mark.parametrize("interrupt", [RuntimeError("stop"), KeyboardInterrupt()])
def test_model_restored_when_training_is_interrupted(
    tiny_model: tuple,
    random_adapter_factory: Callable[..., LoraAdapter],
    interrupt: BaseException,
) -> None:
    model, tokenizer = tiny_model
    before = snapshot(model)
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}

    def stop(step: int, _loss: float) -> None:
        if step == 2:
            raise interrupt

    with pytest.raises(type(interrupt)):
        train_lora(
            model,
            tokenizer,
            EXAMPLES,
            fast_config(),
            frozen=random_adapter_factory(4),
            progress=False,
            on_step=stop,
        )
    assert_bit_identical(model, before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads_before


def test_bad_inputs_raise_clear_errors(
    tiny_model: tuple, random_adapter_factory: Callable[..., LoraAdapter]
) -> None:
    model, tokenizer = tiny_model
    with pytest.raises(MtaError, match="no training examples"):
        train_lora(model, tokenizer, [], fast_config(), progress=False)
    with pytest.raises(MtaError, match="rank must be a positive integer"):
        train_lora(model, tokenizer, EXAMPLES, fast_config(rank=0), progress=False)
    with pytest.raises(ShapeMismatchError, match="c_attn"):
        train_lora(
            model, tokenizer, EXAMPLES, fast_config(target_modules=["c_attn"]), progress=False
        )
    wrong = LoraAdapter(
        {
            "model.layers.0.self_attn.k_proj": LoraModule(
                A=torch.zeros(2, 64), B=torch.zeros(64, 2), scale=1.0
            )
        }
    )
    before = snapshot(model)
    with pytest.raises(ShapeMismatchError, match="k_proj"):
        train_lora(model, tokenizer, EXAMPLES, fast_config(), frozen=wrong, progress=False)
    assert_bit_identical(model, before)


def test_apply_adapter_changes_outputs_and_restores_exactly(
    tiny_model: tuple, random_adapter_factory: Callable[..., LoraAdapter]
) -> None:
    model, _ = tiny_model
    first, second = random_adapter_factory(4, seed=1), random_adapter_factory(2, seed=2)
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    before = snapshot(model)
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with apply_adapter(model, first):
            one = model(input_ids=ids).logits
            with apply_adapter(model, second):
                both = model(input_ids=ids).logits
            assert torch.equal(model(input_ids=ids).logits, one)
    assert_bit_identical(model, before)
    assert (one - base).abs().max() > 1e-3
    assert (both - one).abs().max() > 1e-3
    weight = model.get_submodule("model.layers.0.self_attn.q_proj").weight
    with apply_adapter(model, first):
        expected = (
            before["model.layers.0.self_attn.q_proj.weight"]
            + first.modules["model.layers.0.self_attn.q_proj"].delta()
        )
        assert torch.equal(weight, expected)


def test_apply_adapter_keeps_one_pristine_copy_and_notices_outside_changes(
    tiny_model: tuple, random_adapter_factory: Callable[..., LoraAdapter]
) -> None:
    from mta.inference import _PRISTINE

    model, _ = tiny_model
    adapter = random_adapter_factory(2, seed=3)
    path = "model.layers.0.self_attn.q_proj"
    weight = model.get_submodule(path).weight
    with apply_adapter(model, adapter):
        pass
    kept = model.__dict__[_PRISTINE][path][0]
    with apply_adapter(model, adapter):
        pass
    assert model.__dict__[_PRISTINE][path][0] is kept  # reused, not cloned again
    # A change made outside apply_adapter is what the next block restores, not the old copy.
    original = weight.detach().clone()
    with torch.no_grad():
        weight.add_(0.5)
    changed = weight.detach().clone()
    with apply_adapter(model, adapter):
        assert not torch.equal(weight, changed)
    assert torch.equal(weight, changed)
    with torch.no_grad():
        weight.copy_(original)


def test_apply_adapter_restores_on_error_and_checks_paths(tiny_model: tuple) -> None:
    model, _ = tiny_model
    before = snapshot(model)
    adapter = random_adapter(linear_shapes(model, DEFAULT_TARGET_MODULES), 2)
    with pytest.raises(ValueError, match="boom"), apply_adapter(model, adapter):
        raise ValueError("boom")
    assert_bit_identical(model, before)
    missing = LoraAdapter(
        {
            "model.layers.7.self_attn.q_proj": LoraModule(
                A=torch.zeros(1, 64), B=torch.zeros(64, 1), scale=1.0
            )
        }
    )
    with (
        pytest.raises(ShapeMismatchError, match="not in the base model"),
        apply_adapter(model, missing),
    ):
        pass


def test_generate_is_batch_independent_and_ordered(tiny_model: tuple) -> None:
    model, tokenizer = tiny_model
    prompts = [prompt for prompt, _ in EXAMPLES[:5]] + ["Hi"]
    batched = generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=4)
    single = [generate(model, tokenizer, [p], max_new_tokens=5)[0] for p in prompts]
    assert batched == single
    assert len(batched) == len(prompts)
    assert generate(model, tokenizer, []) == []


def test_trained_adapter_generates_its_targets(tiny_model: tuple) -> None:
    model, tokenizer = tiny_model
    examples = EXAMPLES[:4]
    config = fast_config(rank=8, lr=2e-2, epochs=40, batch_size=4)
    adapter, _ = train_lora(model, tokenizer, examples, config, progress=False)
    prompts = [prompt for prompt, _ in examples]
    with apply_adapter(model, adapter):
        outputs = generate(model, tokenizer, prompts, max_new_tokens=6)
    assert outputs == [target.strip() for _, target in examples]


def test_progress_bar_does_not_change_results(
    tiny_model: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    model, tokenizer = tiny_model
    _, quiet = train_lora(model, tokenizer, EXAMPLES, fast_config(epochs=1), progress=False)
    _, shown = train_lora(model, tokenizer, EXAMPLES, fast_config(epochs=1), progress=True)
    assert quiet == shown
    assert "training" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_rank1_stack_over_fused_leaves_weights_unchanged() -> None:
    model, tokenizer = load_base_model("smollm2")
    shapes = linear_shapes(model, DEFAULT_TARGET_MODULES)
    fused = random_adapter(shapes, 16, seed=0, std=0.01)
    before = snapshot(model)
    examples = [(prompt, target) for prompt, target in EXAMPLES[:4]]
    config = TrainConfig(rank=1, lr=1e-3, batch_size=2, max_length=64, max_steps=2)
    stack, losses = train_lora(model, tokenizer, examples, config, frozen=fused, progress=False)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert len(stack.modules) == 30 * 7
    assert_bit_identical(model, before)
    with apply_adapter(model, fused), apply_adapter(model, stack):
        texts = generate(model, tokenizer, ["The capital of France is"], max_new_tokens=6)
    assert len(texts) == 1 and texts[0].strip() != ""
    assert_bit_identical(model, before)


@pytest.mark.parametrize(
    ("prompt", "target", "text"),
    [
        ("Review: robots on a planet. Tag:", "comedy", " comedy"),  # the space generation emits
        ("Review: robots on a planet. Tag: ", "comedy", "comedy"),  # the prompt has it already
        ("Review: robots on a planet.\n", "comedy", "comedy"),
        ("Review: robots on a planet. Tag:", " comedy", " comedy"),  # the target has it
    ],
)
def test_targets_are_tokenized_as_the_prompt_continues(
    tiny_model: tuple, prompt: str, target: str, text: str
) -> None:
    from mta.examples import continuation_ids

    _, tokenizer = tiny_model
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = continuation_ids(tokenizer, prompt, prompt_ids, target)
    assert tokenizer.decode(ids) == text
    if not prompt.endswith(" "):  # a trailing space merges into the next word's token
        # Exactly the tokens that follow the prompt in the running text the model generates.
        assert tokenizer(prompt + text)["input_ids"] == prompt_ids + ids


@pytest.mark.slow
def test_smollm2_targets_start_with_the_space_token_after_an_answer_cue() -> None:
    from mta.base_model import load_base_model
    from mta.examples import continuation_ids

    _, tokenizer = load_base_model(None)
    prompt = "Which tag fits this movie?\nAnswer:"
    ids = continuation_ids(tokenizer, prompt, tokenizer(prompt)["input_ids"], "dark comedy")
    assert ids == tokenizer(" dark comedy", add_special_tokens=False)["input_ids"]
    assert ids != tokenizer("dark comedy", add_special_tokens=False)["input_ids"]
