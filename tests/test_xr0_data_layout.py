"""xr0.data.layout: a rig's named joint vector in XR0's 32-d bimanual layout and back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xr0.data.layout import MODEL_DIM, SUPPORTED_NAMES, ActionLayout, LayoutError
from xr0.data.synthetic import RIG_JOINT_NAMES


def test_rig_layout_puts_grippers_and_joints_where_the_paper_says():
    lay = ActionLayout.from_joint_names(RIG_JOINT_NAMES)
    assert lay.dim == 14
    dims = dict(zip(lay.joint_names, lay.model_dims))
    assert dims["left_gripper"] == 6 and dims["right_gripper"] == 20
    assert [dims[n] for n in RIG_JOINT_NAMES[:6]] == list(range(7, 13))
    assert [dims[n] for n in RIG_JOINT_NAMES[7:13]] == list(range(21, 27))
    assert np.flatnonzero(lay.mask).tolist() == [6, *range(7, 13), 20, *range(21, 27)]
    assert lay.gripper_mask.tolist() == [False] * 6 + [True] + [False] * 6 + [True]
    assert (lay.delta_mask == ~lay.gripper_mask).all()


def test_round_trip_numpy_and_torch_with_zero_padding():
    lay = ActionLayout.from_joint_names(RIG_JOINT_NAMES)
    x = np.random.default_rng(0).normal(size=(3, 5, 14))
    y = lay.to_model(x)
    assert y.shape == (3, 5, MODEL_DIM) and y.dtype == x.dtype
    assert (y[..., ~lay.mask] == 0).all()
    assert y[0, 0, 6] == x[0, 0, 6] and y[0, 0, 21] == x[0, 0, 7]
    np.testing.assert_array_equal(lay.from_model(y), x)
    t = torch.from_numpy(x).float()
    ty = lay.to_model(t)
    assert isinstance(ty, torch.Tensor) and ty.shape == (3, 5, 32) and ty.dtype == torch.float32
    assert torch.equal(lay.from_model(ty), t)
    np.testing.assert_array_equal(ty.numpy(), y.astype(np.float32))


def test_any_subset_and_any_order_of_the_supported_names_works():
    names = ["right_gripper", "left_elbow", "right_waist"]
    lay = ActionLayout.from_joint_names(names)
    assert lay.model_dims == (20, 9, 21)
    y = lay.to_model(np.array([0.5, 1.0, -2.0]))
    assert y[20] == 0.5 and y[9] == 1.0 and y[21] == -2.0 and np.count_nonzero(y) == 3
    assert lay.mask.sum() == 3
    one_arm = ActionLayout.from_joint_names(RIG_JOINT_NAMES[:7])
    assert np.flatnonzero(one_arm.mask).tolist() == list(range(6, 13))


def test_unknown_and_duplicate_names_are_refused_naming_them():
    with pytest.raises(LayoutError) as e:
        ActionLayout.from_joint_names(["left_waist", "joint7"])
    msg = str(e.value)
    assert "'joint7'" in msg and all(n in msg for n in SUPPORTED_NAMES)
    with pytest.raises(LayoutError, match="'left_waist'.*more than once"):
        ActionLayout.from_joint_names(["left_waist", "left_waist"])
    with pytest.raises(LayoutError, match="no joint names"):
        ActionLayout.from_joint_names([])
    lay = ActionLayout.from_joint_names(RIG_JOINT_NAMES)
    with pytest.raises(LayoutError, match="last dimension of 14"):
        lay.to_model(np.zeros((2, 13)))
    with pytest.raises(LayoutError, match="last dimension of 32"):
        lay.from_model(np.zeros(14))


def test_saved_layout_round_trips_and_layouts_compare():
    lay = ActionLayout.from_joint_names(RIG_JOINT_NAMES)
    d = json.loads(json.dumps(lay.to_dict()))
    assert ActionLayout.from_dict(d) == lay
    d["model_dims"][0] = 0
    with pytest.raises(LayoutError, match="another layout"):
        ActionLayout.from_dict(d)
    left = ActionLayout.from_joint_names(RIG_JOINT_NAMES[:7])
    assert lay.compatible(ActionLayout.from_joint_names(list(RIG_JOINT_NAMES)))
    assert not lay.compatible(left) and not left.compatible(lay)
    assert "only the first has right_waist" in lay.difference(left)
    swapped = ActionLayout.from_joint_names(RIG_JOINT_NAMES[7:] + RIG_JOINT_NAMES[:7])
    assert not lay.compatible(swapped) and "another order" in lay.difference(swapped)
    assert lay.difference(lay) == ""
