#!/usr/bin/env bash
# The MTA tour on a laptop CPU: build a bank of meta-LoRAs, add a new user, fuse their
# nearest anchors, train a rank-1 stack on 5 shots, export one PEFT LoRA, report storage,
# and prove the export loads and generates with plain transformers + PEFT.
#
# Everything the demo writes lives in demo-out/ (removed first): the SQLite registry, the
# blob store, the export cache and the exported adapter. The converted SmolLM2 weights are
# cached once in ~/.cache/mta (or $MTA_CACHE_DIR) and reused by later runs.
#
# Knobs (env): DEMO_OUT (folder), DEMO_EPOCHS (anchor epochs, default 1),
# DEMO_STACK_EPOCHS (stack epochs, default 2), MTA (the mta executable).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
MTA_BIN=${MTA:-$ROOT/.venv/bin/mta}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${DEMO_OUT:-$ROOT/demo-out}
EPOCHS=${DEMO_EPOCHS:-1}
STACK_EPOCHS=${DEMO_STACK_EPOCHS:-2}
DATA=examples/data/movie_tagging_demo.json
NEW_USER=examples/data/new_user.json
USER_ID=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["user_id"])' "$NEW_USER")

rm -rf "$OUT"
mkdir -p "$OUT"
export MTA_DB_URL="sqlite:///$OUT/registry.db"
export MTA_STORE_URL="file://$OUT/store"
# The registry's export cache goes into demo-out; MTA_CACHE_DIR (base-model copy) is left alone.
mta() { "$MTA_BIN" --cache-dir "$OUT/cache" "$@"; }

START=$(date +%s)
step() {
    printf '\n\033[1m== [%3ss] %s\033[0m\n' "$(($(date +%s) - START))" "$1"
    [ $# -gt 1 ] && printf '   $ mta %s\n' "${*:2}"
    return 0
}

echo "demo folder : $OUT"
echo "registry    : $MTA_DB_URL"
echo "blob store  : $MTA_STORE_URL"
echo "export cache: $OUT/cache"

step "1/8 create the registry and the blob store" init
mta init

step "2/8 build a movie_tagging bank: 3 anchors, a rank-8 LoRA per k-means cluster" \
    bank build movie_tagging --data "$DATA" --anchors 3 --epochs "$EPOCHS"
mta bank build movie_tagging --data "$DATA" --anchors 3 --epochs "$EPOCHS" --rank 8
mta bank show movie_tagging

step "3/8 register a new user with a short history" \
    user add "$USER_ID" --bank movie_tagging --profile "$NEW_USER"
mta user add "$USER_ID" --bank movie_tagging --profile "$NEW_USER"

step "4/8 fuse the user's two nearest anchors (only the recipe is stored)" \
    user fuse "$USER_ID" --top-k 2
mta user fuse "$USER_ID" --top-k 2

step "5/8 train a rank-1 stack on 5 shots on top of the frozen fused adapter" \
    user adapt "$USER_ID" --shots 5
mta user adapt "$USER_ID" --shots 5 --rank 1 --epochs "$STACK_EPOCHS"

step "6/8 export fused + stack as one standard PEFT LoRA" \
    user export "$USER_ID" --out "$OUT/adapter"
mta user export "$USER_ID" --out "$OUT/adapter"

step "7/8 where the bytes are" storage report
mta storage report
mta fsck

step "8/8 load the export with transformers + PEFT and answer the user's query"
"$PYTHON" - "$OUT/adapter" "$NEW_USER" <<'PY'
import json
import sys

import torch
from peft import PeftModel

from mta.base_model import load_base_model
from mta.tasks import get_task
from mta.tasks.retrieval import query_example

adapter_dir, user_file = sys.argv[1], sys.argv[2]
user = json.load(open(user_file))
task = get_task("movie_tagging")
prompt, gold = query_example(task, user, user["query"][0])

# A plain transformers model (SmolLM2, dequantized from the bundled GGUF) + the PEFT folder.
base, tokenizer = load_base_model("smollm2")
inputs = tokenizer(prompt, return_tensors="pt")
with torch.no_grad():
    base_logits = base(**inputs).logits[0, -1].clone()
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    peft_logits = model(**inputs).logits[0, -1]
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False,
                               pad_token_id=tokenizer.eos_token_id)
answer = tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
shift = (peft_logits - base_logits).abs().max().item()
print(f"PeftModel loaded {adapter_dir} ({type(model).__name__}); max logit shift vs base {shift:.3f}")
print(f"query gold tag : {gold}")
print(f"generated      : {answer.strip()!r} -> parsed {task.parse(answer, prompt)!r}")
if not torch.isfinite(peft_logits).all() or shift == 0.0:
    sys.exit("the exported adapter did not change the model")
PY

printf '\nTo load it yourself:\n'
printf '  from mta.base_model import load_base_model; from peft import PeftModel\n'
printf '  base, tokenizer = load_base_model("smollm2")\n'
printf '  model = PeftModel.from_pretrained(base, "%s")\n' "$OUT/adapter"
printf '\ndemo finished in %ss (outputs in %s)\n' "$(($(date +%s) - START))" "$OUT"
