"""Greedy decoding of a batch of rows, one step at a time (plain torch + the model's KV cache), and
the chat prompt built from a whole `messages` list.

`decode_steps` yields after every step the token each row produced (None once a row is done), so a
server can stream each step as it is made and drop a row whose client went away: a cancelled row
stops being decoded at the next step. Rows are left-padded; position ids follow each row's own
tokens, so a row's answer does not depend on the other rows of its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


class PromptTooLong(ValueError):
    """The last message alone does not fit in the context."""


def chat_ids(codec, messages: list[dict], reserve: int) -> list[int]:
    """The ids of the whole conversation through the model's chat template (system, user and
    assistant turns, then the generation prompt). When it exceeds `max_length - reserve`, the
    oldest turns after any system message are dropped first; the last message is never cut."""
    budget = codec.max_length - reserve
    msgs = [dict(m) for m in messages]

    def render(ms):
        if codec.chat:
            text = codec.tok.apply_chat_template(ms, add_generation_prompt=True, tokenize=False)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in ms) + "assistant: "
        return codec.ids(text)

    ids = render(msgs)
    while len(ids) > budget:
        first = 1 if msgs and msgs[0]["role"] == "system" and len(msgs) > 2 else 0
        if len(msgs) - first <= 1:
            raise PromptTooLong(f"the last message needs {len(ids)} tokens; the context holds {budget}")
        del msgs[first]
        ids = render(msgs)
    return ids


@torch.inference_mode()
def decode_steps(
    model,
    rows: list[list[int]],
    max_new: list[int],
    eos_id: int,
    pad_id: int,
    cancelled: Callable[[int], bool] | None = None,
) -> Iterator[list[int | None]]:
    """Greedy decoding of `rows` (prompt ids) together: yields, per step, each row's new token or
    None when the row has finished (end of sequence, its `max_new` reached, or cancelled)."""
    dev = next(model.parameters()).device
    n, width = len(rows), max(len(r) for r in rows)
    x = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    x, mask = x.to(dev), mask.to(dev)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=True)
    past = out.past_key_values
    done = [False] * n
    made = [0] * n
    nxt = out.logits[:, -1].argmax(-1)
    while True:
        step: list[int | None] = []
        for i in range(n):
            if done[i] or (cancelled is not None and cancelled(i)):
                done[i] = True
                step.append(None)
                continue
            t = int(nxt[i])
            if t == eos_id:
                done[i] = True
                step.append(None)
                continue
            made[i] += 1
            step.append(t)
            if made[i] >= max_new[i]:
                done[i] = True
        yield step
        if all(done):
            return
        mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long, device=dev)], 1)
        pos = (mask.sum(1, keepdim=True) - 1).clamp(min=0)
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1)
