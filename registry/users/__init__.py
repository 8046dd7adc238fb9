"""Users and their personalization: add (`records`, many at once in `add_many`), fuse a
recipe, adapt a stack (`adapt`), export the adapter (`export`), and delete a user with
every blob and anchor they fed (`delete`, `anchor_redaction`). `rows` and
`current_stacks` are the row lookups these services and the bulk jobs share.
"""
