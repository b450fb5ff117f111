"""jaxseed.mesh: the (seed, data) mesh a run asks for, refused in one line where it cannot be."""

import pytest

from jaxseed import mesh
from jaxseed.errors import UserError


@pytest.mark.parametrize("replicas, batch, devices, split, message", [
    (1, 64, 1, "seed=2,data=2", "has 4 devices"),
    (3, 64, 1, "seed=2,data=1", "has 2 devices"),
    (1, 64, 1, "seed=1", "name both axes"),
    (1, 64, 1, "data=x,seed=1", "positive integers"),
    (1, 64, 5, None, "more devices"),
])
def test_bad_meshes_are_one_clear_error(replicas, batch, devices, split, message):
    with pytest.raises(UserError, match=message):
        mesh.plan(replicas, batch, devices, split)
