"""The cloud builder: back-projection, filters, layouts, colour packing, the PointCloud2 layout."""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from dense_perception.pipeline.cloud import (
    CLOUD_DTYPE,
    NO_LABEL,
    POINT_STEP,
    CameraModel,
    PointFieldType,
    build_cloud,
    cloud_fields,
    intrinsics_matrix,
    pack_rgb,
    pointcloud2_layout,
    scale_intrinsics,
    unpack_rgb,
)

K = np.array([[100.0, 0.0, 1.5], [0.0, 200.0, 0.5], [0.0, 0.0, 1.0]])


def test_a_pixel_is_back_projected_by_hand():
    depth_m = np.full((4, 5), 2.0, np.float32)
    cloud = build_cloud(depth_m, K, organized=True)
    point = cloud[3, 4]  # row v = 3, column u = 4
    # x = (u - cx) z / fx = 2.5 * 2 / 100, y = (v - cy) z / fy = 2.5 * 2 / 200
    assert (point["x"], point["y"], point["z"]) == pytest.approx((0.05, 0.025, 2.0), rel=1e-6)
    assert build_cloud(depth_m, K)[-1].tolist()[:3] == pytest.approx([0.05, 0.025, 2.0], rel=1e-6)


def test_invalid_and_out_of_range_depths_are_dropped_or_nan():
    depth_m = np.array([[np.nan, 0.0, -1.0, np.inf], [0.5, 1.0, 5.0, 9.0]], np.float32)
    dense = build_cloud(depth_m, K, min_depth=0.75, max_depth=5.0)
    assert dense["z"].tolist() == [1.0, 5.0]
    organized = build_cloud(depth_m, K, min_depth=0.75, max_depth=5.0, organized=True)
    assert organized.shape == (2, 4)
    valid = np.isfinite(organized["z"])
    assert valid.tolist() == [[False] * 4, [False, True, True, False]]
    assert np.isnan(organized["x"][~valid]).all() and np.isnan(organized["y"][~valid]).all()


def test_stride_keeps_every_nth_row_and_column():
    depth_m = np.arange(1, 36, dtype=np.float32).reshape(5, 7)
    organized = build_cloud(depth_m, K, stride=2, organized=True)
    assert organized.shape == (3, 4)
    assert np.array_equal(organized["z"], depth_m[::2, ::2])
    dense = build_cloud(depth_m, K, stride=3)
    assert np.array_equal(dense["z"], depth_m[::3, ::3].reshape(-1))
    # column u = 6 of row v = 3: x = (6 - 1.5) z / 100
    assert dense[-1]["x"] == pytest.approx((6 - 1.5) * depth_m[3, 6] / 100, rel=1e-6)


def test_colour_and_labels_follow_their_points():
    depth_m = np.array([[1.0, np.nan], [2.0, 3.0]], np.float32)
    rgb = np.array([[[255, 128, 1], [9, 9, 9]], [[0, 0, 0], [1, 2, 3]]], np.uint8)
    labels = np.array([[7, 8], [300, 65000]], np.uint16)
    cloud = build_cloud(depth_m, K, rgb=rgb, labels=labels)
    assert cloud["label"].tolist() == [7, 300, 65000]
    assert cloud["rgb"][:1].view(np.uint32)[0] == 0x00FF8001
    assert np.array_equal(unpack_rgb(cloud["rgb"]), rgb.reshape(-1, 3)[[0, 2, 3]])
    bare = build_cloud(depth_m, K)
    assert (bare["label"] == NO_LABEL).all() and (bare["rgb"].view(np.uint32) == 0).all()


def test_pack_rgb_matches_the_pcl_rule():
    rgb = np.random.default_rng(1).integers(0, 256, (10, 3), dtype=np.uint8)
    expected = [(int(r) << 16) | (int(g) << 8) | int(b) for r, g, b in rgb]
    assert pack_rgb(rgb).view(np.uint32).tolist() == expected
    assert np.array_equal(unpack_rgb(pack_rgb(rgb)), rgb)


def sensor_msgs_py_dtype(fields, point_step=None) -> np.dtype:
    """``sensor_msgs_py.point_cloud2.dtype_from_fields``'s documented rule (rolling, 2024-11)."""
    numpy_types = {PointFieldType.FLOAT32: np.dtype(np.float32),
                   PointFieldType.UINT16: np.dtype(np.uint16)}
    spec = {"names": [f.name for f in fields], "offsets": [f.offset for f in fields],
            "formats": [numpy_types[f.datatype].str for f in fields]}
    if point_step is not None:
        spec["itemsize"] = point_step
    return np.dtype(spec)


def test_layout_is_what_sensor_msgs_py_create_cloud_gives():
    fields = cloud_fields()
    assert [(f.name, f.offset, int(f.datatype), f.count) for f in fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1), ("label", 16, 4, 1)]
    assert sensor_msgs_py_dtype(fields, point_step=POINT_STEP) == CLOUD_DTYPE
    assert CLOUD_DTYPE.itemsize == POINT_STEP == 20
    # Without point_step, create_cloud would pack points into 18 bytes; we keep 4-byte alignment.
    assert sensor_msgs_py_dtype(fields).itemsize == 18


def test_intrinsics_scale_with_the_image():
    K_full = intrinsics_matrix([500.0, 0.0, 319.5, 0.0, 400.0, 239.5, 0.0, 0.0, 1.0])
    K_half = scale_intrinsics(K_full, (640, 480), (320, 240))
    assert K_half[0, 0] == 250.0 and K_half[1, 1] == 200.0
    assert (K_half[0, 2], K_half[1, 2]) == (159.5, 119.5)  # centre stays the centre
    info = SimpleNamespace(k=K_full.reshape(-1).tolist(), width=640, height=480)
    camera = CameraModel.from_camera_info(info).for_image(320, 240)
    assert np.array_equal(camera.K, K_half) and (camera.width, camera.height) == (320, 240)



@pytest.mark.parametrize("k, width, height, reason", [
    ([500.0, 0, 319.5, 0, 400.0, 239.5, 0, 0, 1], 0, 480, "no image size"),
    ([500.0, 0, 319.5, 0, 400.0, 239.5, 0, 0, 1], 640, 0, "no image size"),
    ([1e-300, 0, 319.5, 0, 400.0, 239.5, 0, 0, 1], 640, 480, "fx = 1e-300 gives a 180 degree"),
    ([500.0, 0, 319.5, 0, 1e9, 239.5, 0, 0, 1], 640, 480, r"fy = 1e\+09"),
    ([1500.0, 0, 959.5, 0, 1500.0, 539.5, 0, 0, 1], 640, 480, "cx = 959.5 lies outside"),
    ([500.0, 0, 319.5, 0, 400.0, -200.0, 0, 0, 1], 640, 480, "cy = -200 lies outside"),
    ([np.nan, 0, 319.5, 0, 400.0, 239.5, 0, 0, 1], 640, 480, "non-finite"),
])
def test_camera_info_that_cannot_describe_the_image_is_rejected(k, width, height, reason):
    with pytest.raises(ValueError, match=reason):
        CameraModel.from_camera_info(SimpleNamespace(k=k, width=width, height=height))


def test_no_point_is_ever_non_finite_whatever_the_depth():
    depth = np.array([[1e38, -1.0, np.inf], [np.nan, 3e38, 2.0]], np.float32)
    K = intrinsics_matrix([1e-3, 0, 0.5, 0, 1e-3, 0.5, 0, 0, 1])  # the builder itself takes any K
    for organized in (False, True):
        cloud = build_cloud(depth, K, organized=organized, max_depth=np.inf)
        points = cloud.reshape(-1)
        finite = np.isfinite(points["x"]) & np.isfinite(points["y"]) & np.isfinite(points["z"])
        if organized:
            assert np.isnan(points["z"][~finite]).all()  # invalid points are NaN, never inf
        else:
            assert finite.all()


def test_uncalibrated_camera_info_is_rejected():
    with pytest.raises(ValueError, match="no focal length"):
        intrinsics_matrix([0.0] * 9)
    with pytest.raises(ValueError, match="non-finite"):
        intrinsics_matrix([np.nan] + [1.0] * 8)


@pytest.mark.parametrize("kwargs, reason", [
    ({"depth_m": np.ones((2, 2), np.uint16)}, "float metres"),
    ({"depth_m": np.ones(4, np.float32)}, r"\[H, W\]"),
    ({"rgb": np.zeros((2, 3, 3), np.uint8)}, "rgb must be uint8"),
    ({"labels": np.zeros((2, 2), np.int64)}, "labels must be uint8/uint16"),
    ({"stride": 0}, "stride"),
    ({"min_depth": 2.0, "max_depth": 1.0}, "below max_depth"),
])
def test_bad_inputs_are_rejected(kwargs, reason):
    arguments = {"depth_m": np.ones((2, 2), np.float32), "K": K, **kwargs}
    with pytest.raises(ValueError, match=reason):
        build_cloud(**arguments)


@pytest.mark.parametrize("organized", [False, True])
def test_vga_cloud_takes_a_few_milliseconds(organized):
    rng = np.random.default_rng(0)
    depth_m = rng.uniform(0.5, 10.0, (480, 640)).astype(np.float32)
    depth_m[::7, ::5] = np.nan
    rgb = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    labels = rng.integers(0, 150, (480, 640), dtype=np.uint8)
    K_vga = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    timings = []
    for _ in range(10):
        start = time.perf_counter()
        cloud = build_cloud(depth_m, K_vga, rgb=rgb, labels=labels, organized=organized)
        timings.append(time.perf_counter() - start)
    best_ms = 1e3 * min(timings)
    print(f"640x480 cloud (organized={organized}): best {best_ms:.1f} ms, "
          f"median {1e3 * float(np.median(timings)):.1f} ms")
    assert cloud.size == (480 * 640 if organized else np.isfinite(depth_m).sum())
    assert best_ms < 50.0  # a few ms on one core; generous for a loaded CI machine


# ---- boundaries, layouts and messages ------------------------------------------------------------
def test_zero_depth_is_invalid_and_the_range_bounds_are_inclusive():
    depth_m = np.array([[0.0, 0.75, 5.0, 5.5]], np.float32)
    assert build_cloud(depth_m, K)["z"].tolist() == [0.75, 5.0, 5.5]
    assert build_cloud(depth_m, K, min_depth=0.75, max_depth=5.0)["z"].tolist() == [0.75, 5.0]


def test_organized_cloud_keeps_colour_and_labels_at_their_pixels():
    depth_m = np.array([[1.0, np.nan, 2.0], [3.0, 4.0, 0.0]], np.float32)
    rgb = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
    labels = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    organized = build_cloud(depth_m, K, rgb=rgb, labels=labels, organized=True)
    assert np.array_equal(unpack_rgb(organized["rgb"]), rgb)
    assert np.array_equal(organized["label"], labels)


def test_unpack_rgb_keeps_the_layout_of_its_input():
    rgb = np.random.default_rng(2).integers(0, 256, (2, 3, 3), dtype=np.uint8)
    unpacked = unpack_rgb(pack_rgb(rgb))
    assert unpacked.dtype == np.uint8 and unpacked.shape == (2, 3, 3) and np.array_equal(unpacked, rgb)


def test_pointcloud2_layout_of_an_organised_cloud():
    depth_m = np.array([[1.0, np.nan, 2.0], [3.0, 4.0, 5.0]], np.float32)
    cloud = build_cloud(depth_m, K, organized=True)
    layout = pointcloud2_layout(cloud)
    assert {k: layout[k] for k in ("height", "width", "is_bigendian", "point_step", "row_step", "is_dense")} == {
        "height": 2, "width": 3, "is_bigendian": False, "point_step": 20, "row_step": 60, "is_dense": False}
    assert layout["data"].dtype == np.uint8 and layout["data"].tobytes() == cloud.tobytes()
    assert len(layout["data"]) == 6 * 20
    # the point of row 1, column 2 sits at byte 20 * (3 + 2); its z is little-endian float32 at offset 8
    assert np.frombuffer(layout["data"][100 + 8:100 + 12].tobytes(), "<f4")[0] == 5.0


def test_pointcloud2_layout_of_a_dense_cloud_and_of_an_explicit_shape():
    cloud = build_cloud(np.array([[1.0, np.nan], [2.0, 3.0]], np.float32), K)
    layout = pointcloud2_layout(cloud)
    assert (layout["height"], layout["width"], layout["row_step"], layout["is_dense"]) == (1, 3, 60, True)
    assert layout["data"].tobytes() == cloud.tobytes()
    reshaped = pointcloud2_layout(build_cloud(np.ones((2, 3), np.float32), K), organized_shape=(3, 2))
    assert (reshaped["height"], reshaped["width"], reshaped["row_step"], reshaped["is_dense"]) == (3, 2, 40, False)
    with pytest.raises(ValueError) as error:
        pointcloud2_layout(cloud, organized_shape=(2, 2))
    assert str(error.value) == "organized shape (2, 2) does not hold 3 points"
    with pytest.raises(ValueError, match="is not CLOUD_DTYPE"):
        pointcloud2_layout(np.zeros(3, np.float32))


def test_camera_model_for_its_own_size_keeps_k_and_size():
    camera = CameraModel(K, width=5, height=4)
    same = camera.for_image(5, 4)
    assert (same.width, same.height) == (5, 4) and np.array_equal(same.K, K)
    assert (same.fx, same.fy, same.cx, same.cy) == (100.0, 200.0, 1.5, 0.5)


def test_intrinsics_matrix_is_float_and_needs_both_focal_lengths():
    K_int = intrinsics_matrix([1, 0, 2, 0, 1, 3, 0, 0, 1])
    assert K_int.dtype == np.float64 and K_int.shape == (3, 3) and K_int[1, 2] == 3.0
    assert intrinsics_matrix([0.5, 0, 0, 0, 0.5, 0, 0, 0, 1])[0, 0] == 0.5, "a small focal length is valid"
    for fx, fy in ((0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)):
        with pytest.raises(ValueError) as error:
            intrinsics_matrix([fx, 0, 0, 0, fy, 5.0, 0, 0, 1])
        assert str(error.value) == (f"camera matrix has no focal length (fx={fx}, fy={fy}): "
                                    "is the camera calibrated?")
    with pytest.raises(ValueError) as error:
        intrinsics_matrix([1.0] * 8)
    assert str(error.value) == "camera matrix needs 9 values, got 8"
    with pytest.raises(ValueError) as error:
        intrinsics_matrix([1.0] * 8 + [np.inf])
    assert str(error.value) == "camera matrix has non-finite values"


def test_scale_intrinsics_scales_skew_and_refuses_empty_sizes():
    K_skew = np.array([[100, 4, 10], [0, 80, 20], [0, 0, 1]])  # integers: the result must still be float
    scaled = scale_intrinsics(K_skew, (40, 30), (20, 60))
    expected = [[50.0, 2.0, 10.5 * 0.5 - 0.5], [0.0, 160.0, 20.5 * 2 - 0.5], [0.0, 0.0, 1.0]]
    assert scaled.dtype == np.float64 and np.array_equal(scaled, expected)
    assert scale_intrinsics(K_skew, (40, 30), (1, 1))[0, 0] == 2.5, "a 1x1 target is a valid size"
    for sizes in (((0, 30), (20, 60)), ((40, 0), (20, 60)), ((40, 30), (0, 60)), ((40, 30), (20, 0))):
        with pytest.raises(ValueError) as error:
            scale_intrinsics(K_skew, *sizes)
        assert str(error.value) == f"cannot scale intrinsics from {sizes[0]} to {sizes[1]}"


def test_input_checks_at_their_boundaries():
    assert build_cloud(np.ones((1, 1), np.float32), K).size == 1, "a 1x1 depth image is fine"
    with pytest.raises(ValueError, match=r"non-empty \[H, W\] array, got shape \[0, 4\]"):
        build_cloud(np.ones((0, 4), np.float32), K)
    with pytest.raises(ValueError) as error:
        build_cloud(np.ones((2, 2), np.float32), np.eye(2))
    assert str(error.value) == "K must be 3x3, got shape [2, 2]"
    with pytest.raises(ValueError, match=r"min_depth \(2.0\) must be below max_depth \(2.0\)"):
        build_cloud(np.ones((2, 2), np.float32), K, min_depth=2.0, max_depth=2.0)
