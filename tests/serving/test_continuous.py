"""Iteration-level batching (`serving.continuous`): rows that join while others decode, leave early
or are cancelled get, token for token, the answer each gets decoded alone with its own adapter."""

from __future__ import annotations

import torch

from serving.continuous import ContinuousDecoder, Row
from serving.decode import decode_steps
from serving.shared_basis import SharedBasis, row_from_record
from suite.models import ModelConfig, load_base
from tests.serving.test_shared_basis import _user, bank  # noqa: F401 - the module's bank fixture


def _alone(model, basis, ids, adapter, max_new, eos, pad):
    toks = []
    with basis.rows([adapter]):
        for step in decode_steps(model, [ids], [max_new], eos, pad):
            if step[0] is not None:
                toks.append(step[0])
    return toks


def test_rows_joining_and_leaving_between_steps_get_their_alone_answers(bank):  # noqa: F811
    """Catches: a joining row's cache padded on the wrong side or its positions counted from the
    batch's width (its tokens change), the adapters of the previous batch kept after rows change
    (a row answered with another row's adapter), finished rows' columns left in the mask, and a
    cancelled row that keeps decoding."""
    loaded, _ = bank
    model, codec = load_base(ModelConfig(name="tiny"))
    model.eval()
    basis = SharedBasis(model, loaded.adapters, loaded.scales)
    g = torch.Generator().manual_seed(3)
    users = []
    for i in range(7):
        anchors, w, stack = _user(loaded, g, k=1 + i % 3, rank=(i % 3) or None)
        users.append(row_from_record(loaded.ids, anchors, w, stack or {}, 2.0))
    users.append(None)  # the base model among them
    prompts = [torch.randint(5, 200, (n,), generator=g).tolist() for n in (3, 9, 5, 14, 2, 7, 11, 6)]
    budgets = [12, 3, 8, 5, 10, 1, 7, 9]
    eos = -1  # never produced: every row runs to its budget, so lengths differ by design
    pad = codec.pad_id
    want = [_alone(model, basis, p, a, m, eos, pad) for p, a, m in zip(prompts, users, budgets)]

    got: list[list[int]] = [[] for _ in prompts]
    ended = [0] * len(prompts)

    def emit_to(i):
        def emit(t):
            if t is None:
                ended[i] += 1
            else:
                got[i].append(t)

        return emit

    cancel_at = {6: 4}  # row 6 is cancelled after 4 tokens: it must stop there
    dec = ContinuousDecoder(model, basis, eos, pad)
    rows = [
        Row(p, a, m, emit_to(i), cancelled=(lambda i=i: i in cancel_at and len(got[i]) >= cancel_at[i]))
        for i, (p, a, m) in enumerate(zip(prompts, users, budgets))
    ]
    schedule = {0: [0, 1], 1: [2], 3: [3, 4], 4: [5], 6: [6, 7]}  # step -> rows joining before it
    step = 0
    while step in schedule or dec.rows or step <= max(schedule):
        dec.admit([rows[i] for i in schedule.get(step, [])])
        if dec.rows:
            dec.step()
        if dec.rows:  # each row's cache holds its prompt and its tokens, and no column all rows mask
            held = [len(r.ids) + r.made for r in dec.rows]
            assert dec.mask.sum(1).tolist() == held and dec.mask.shape[1] == max(held)
        step += 1
    dec.close()
    for i in range(len(prompts)):
        expect = want[i][: cancel_at[i]] if i in cancel_at else want[i]
        assert got[i] == expect, i
        assert ended[i] == 1, i  # each row ends exactly once
    assert dec.rows == [] and dec.kv == []
