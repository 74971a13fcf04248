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
