import numpy as np

from memgas.association import AssociationConfig, associate, gmm_neighbours


def test_gmm_splits_a_known_bimodal_sample():
    rng = np.random.default_rng(0)
    high, low = rng.normal(0.8, 0.02, 8), rng.normal(0.2, 0.02, 22)
    mask = gmm_neighbours(np.concatenate([high, low]))
    assert mask[:8].all() and not mask[8:].any()


def test_no_split_on_constant_scores():
    assert not gmm_neighbours(np.full(10, 0.5)).any()


def test_associate_links_new_nodes_to_their_similar_old_nodes():
    rng = np.random.default_rng(1)
    a, b = np.eye(16)[0], np.eye(16)[1]
    old = np.stack(
        [a + 0.05 * rng.normal(size=16) for _ in range(5)] + [b + 0.05 * rng.normal(size=16) for _ in range(25)]
    )
    new = np.stack([a, b])
    edges = associate(new, old, AssociationConfig(mem_threshold=30))
    assert {j for i, j in edges if i == 0} == set(range(5))
    assert {j for i, j in edges if i == 1} and all(j >= 5 for i, j in edges if i == 1)


def test_exact_top_on_a_large_pool_equals_a_full_stable_sort_ties_included():
    """The partition path (large pools) gives exactly the full stable sort's candidates and order,
    ties at the k-th score included. Mutation caught: `row > kth` (ties at the cut dropped)."""
    import numpy as np

    from memgas.association import exact_top

    rng = np.random.default_rng(0)
    for trial in range(10):
        old = np.round(rng.standard_normal((int(rng.integers(500, 3000)), 16)), 1).astype(np.float32)  # many ties
        old[5] = old[7]
        new = rng.standard_normal((4, 16)).astype(np.float32)
        ref = np.argsort(-(new @ old.T), axis=1, kind="stable")[:, :30]
        assert (exact_top(new, old, 30)[0] == ref).all(), trial


def test_a_pairs_score_does_not_depend_on_the_batch_or_how_many_old_nodes_are_scanned():
    """Node 0's scores against its 8 best old nodes, bit for bit, whether it is scanned alone or in
    a batch of 16 new nodes (a session at add time, a subset of it re-associated after a delete)
    and whether the scan holds 8 old nodes or up to 3,000. Mutation caught (seen failing on this
    machine): the scores from a float32 product (`new_emb @ old_emb.T`), whose summation order
    follows how BLAS blocks the shapes."""
    from memgas.association import exact_top

    rng = np.random.default_rng(0)
    new = rng.standard_normal((16, 384)).astype(np.float32)
    old = rng.standard_normal((3000, 384)).astype(np.float32)
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    old[:8] = new[0] + 0.01 * old[:8]  # node 0's 8 best candidates sit first, in every scan

    ref_top, ref = (a[0] for a in exact_top(new[:1], old[:8], 8))
    for rows in (1, 5, 16):
        for n in (8, 17, 64, 257, 1000, 3000):
            top, got = (a[0] for a in exact_top(new[:rows], old[:n], 8))
            assert (top == ref_top).all() and got.tobytes() == ref.tobytes(), (rows, n)
