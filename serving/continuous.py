"""Iteration-level batching, in plain torch: rows are decoded together one step at a time, a row
that arrives while others decode joins at the next step, and a row that finishes (end of
sequence, its `max_new`, or a client gone) leaves at once (the scheduling of Orca and vLLM,
without their paged memory).

State between steps is the batch's KV cache (left-padded: every row's cached tokens end at the
same column), its attention mask and each row's next token (not yet in the cache). A joining row
is prefilled on its own (with its own adapters, `SharedBasis.rows`) and its cache is concatenated
along the batch, the shorter side padded on the left; masked columns add nothing to attention, so
a row's answer does not depend on which rows share its steps. Columns that every remaining row
masks are dropped when rows leave, so a long-gone row's length is not carried on.

    dec = ContinuousDecoder(model, basis, eos_id, pad_id)
    dec.admit([Row(ids, adapter, max_new, emit)])     # any time between steps
    while dec.rows: dec.step()                        # emit(token) per new token, emit(None) at the end
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache


@dataclass
class Row:
    """One request in the batch: its prompt ids, its adapter (None = the base model), its token
    budget, where its tokens go (`emit(token)`, then `emit(None)` once, or `emit(exception)`) and
    whether its client went away."""

    ids: list[int]
    adapter: object
    max_new: int
    emit: Callable[[object], None]
    cancelled: Callable[[], bool] = lambda: False
    made: int = field(default=0, init=False)
    serial: int = field(default_factory=itertools.count().__next__, init=False)  # never reused, unlike id()


class ContinuousDecoder:
    """The decoding state of one replica's batch (one thread drives it: `admit`, `step`)."""

    def __init__(self, model, basis, eos_id: int, pad_id: int):
        self.model, self.basis, self.eos_id, self.pad_id = model, basis, eos_id, pad_id
        self.dev = next(model.parameters()).device
        self.rows: list[Row] = []
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: (batch, heads, columns, dim)
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.dev)
        self.nxt = torch.zeros(0, dtype=torch.long, device=self.dev)
        self._ctx_key: tuple | None = None
        self._ctx = contextlib.ExitStack()

    def close(self) -> None:
        self._ctx.close()

    def _adapters(self, rows: list[Row]):
        """The shared basis set to `rows`' adapters; kept while the batch's rows stay the same."""
        key = tuple(r.serial for r in rows)
        if key != self._ctx_key:
            self._ctx.close()
            self._ctx = contextlib.ExitStack()
            self._ctx.enter_context(self.basis.rows([r.adapter for r in rows]))
            self._ctx_key = key

    @torch.inference_mode()
    def admit(self, new: list[Row]) -> None:
        """Prefill `new` rows together and add them to the batch; their first token is emitted by
        the next `step`."""
        if not new:
            return
        width = max(len(r.ids) for r in new)
        x = torch.full((len(new), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for i, r in enumerate(new):
            x[i, width - len(r.ids) :] = torch.tensor(r.ids, dtype=torch.long)
            mask[i, width - len(r.ids) :] = 1
        x, mask = x.to(self.dev), mask.to(self.dev)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        self._ctx.close()  # the prefill runs with the new rows' adapters only
        self._ctx_key = None
        with self.basis.rows([r.adapter for r in new]):
            out = self.model(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=True)
        kv = _layers(out.past_key_values)
        nxt = out.logits[:, -1].argmax(-1)
        if not self.rows:
            self.rows, self.kv, self.mask, self.nxt = list(new), kv, mask, nxt
            return
        a, b = self.mask.shape[1], width  # pad the shorter side on the left, then stack the rows
        pad = lambda t, n: torch.nn.functional.pad(t, (0, 0, n, 0)) if n else t  # noqa: E731 - (.., cols, dim)
        self.kv = [(torch.cat([pad(k0, b - a if b > a else 0), pad(k1, a - b if a > b else 0)]),
                    torch.cat([pad(v0, b - a if b > a else 0), pad(v1, a - b if a > b else 0)]))
                   for (k0, v0), (k1, v1) in zip(self.kv, kv)]  # fmt: skip
        m0 = torch.nn.functional.pad(self.mask, (max(0, b - a), 0))
        m1 = torch.nn.functional.pad(mask, (max(0, a - b), 0))
        self.mask = torch.cat([m0, m1])
        self.nxt = torch.cat([self.nxt, nxt])
        self.rows += new

    @torch.inference_mode()
    def step(self) -> None:
        """Emit every row's next token, let finished rows leave, and decode one more token for
        the rest."""
        keep = []
        for i, r in enumerate(self.rows):
            t = int(self.nxt[i])
            if r.cancelled() or t == self.eos_id:
                r.emit(None)
                continue
            r.made += 1
            r.emit(t)
            if r.made >= r.max_new:
                r.emit(None)
                continue
            keep.append(i)
        if len(keep) < len(self.rows):
            self._select(keep)
        if not self.rows:
            return
        self._adapters(self.rows)
        n = len(self.rows)
        self.mask = torch.cat([self.mask, torch.ones((n, 1), dtype=torch.long, device=self.dev)], 1)
        pos = (self.mask.sum(1, keepdim=True) - 1).clamp(min=0)
        past = DynamicCache(ddp_cache_data=self.kv)
        out = self.model(
            input_ids=self.nxt[:, None],
            attention_mask=self.mask,
            position_ids=pos,
            past_key_values=past,
            use_cache=True,
        )
        self.kv = _layers(out.past_key_values)
        self.nxt = out.logits[:, -1].argmax(-1)

    def fail(self, e: Exception) -> None:
        """Every row learns of `e` and leaves (the batch state is dropped)."""
        for r in self.rows:
            r.emit(e)
        self._select([])

    def _select(self, keep: list[int]) -> None:
        idx = torch.tensor(keep, dtype=torch.long, device=self.dev)
        self.rows = [self.rows[i] for i in keep]
        self.nxt, self.mask = self.nxt[idx], self.mask[idx]
        self.kv = [(k[idx], v[idx]) for k, v in self.kv]
        if self.rows:  # columns that every remaining row masks carry nothing: drop them
            lead = int((self.mask.cumsum(1) == 0).sum(1).min())
            if lead:
                self.mask = self.mask[:, lead:]
                self.kv = [(k[:, :, lead:], v[:, :, lead:]) for k, v in self.kv]
        else:
            self.mask = self.mask[:, :0]
            self.kv = []


def _layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for k, v, *rest in cache:
        if rest and rest[0] is not None:  # a sliding window keeps the last columns only: not handled here
            raise NotImplementedError("iteration-level batching needs full-attention KV caches (no sliding window)")
        out.append((k, v))
    return out
