"""fcnseg.images: reading every supported format, colour refusal, the intensity window, colours. No Caffe."""
import numpy as np
import pytest
import tifffile
from PIL import Image

from fcnseg.errors import DataError
from fcnseg.images import (IGNORE_COLOR, PALETTE, WindowEstimator, apply_window, compute_window, overlay,
                           read_image, read_mask, read_stack, read_time_stack, save_label_png)

RNG = np.random.default_rng(0)


def _u16(shape=(12, 17)):
    return RNG.integers(30000, 40000, shape, dtype=np.uint16)


# ---- reading images ------------------------------------------------------------------------------------

def test_reads_8_and_16_bit_png(tmp_path):
    a8 = RNG.integers(0, 256, (12, 17), dtype=np.uint8)
    Image.fromarray(a8).save(tmp_path / "a.png")
    a16 = _u16()
    Image.frombytes("I;16", (17, 12), a16.tobytes()).save(tmp_path / "b.png")
    got8, got16 = read_image(tmp_path / "a.png"), read_image(tmp_path / "b.png")
    assert got8.dtype == np.uint8 and np.array_equal(got8, a8)
    assert got16.dtype == np.uint16 and np.array_equal(got16, a16)


def test_reads_tiff_16_bit_float_and_npy(tmp_path):
    a16, af = _u16(), RNG.random((12, 17)).astype(np.float32)
    tifffile.imwrite(tmp_path / "a.tif", a16)
    tifffile.imwrite(tmp_path / "f.tiff", af)
    np.save(tmp_path / "n.npy", a16)
    assert np.array_equal(read_image(tmp_path / "a.tif"), a16)
    got = read_image(tmp_path / "f.tiff")
    assert got.dtype == np.float32 and np.array_equal(got, af)
    assert np.array_equal(read_image(tmp_path / "n.npy"), a16)


def test_reads_jpeg_as_gray(tmp_path):
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / "a.jpg")
    got = read_image(tmp_path / "a.jpg")
    assert got.shape == (8, 8) and got.dtype == np.uint8 and abs(int(got.mean()) - 100) <= 1


def test_rgb_image_refused_naming_file_unless_to_gray(tmp_path):
    rgb = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(DataError) as e:
        read_image(tmp_path / "c.png")
    assert str(tmp_path / "c.png") in str(e.value) and "RGB" in str(e.value) and "--to-gray" in str(e.value)
    gray = read_image(tmp_path / "c.png", to_gray=True)
    expected = np.rint(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    assert gray.dtype == np.uint8 and np.array_equal(gray, expected)


def test_rgb_with_equal_channels_says_nothing_is_lost(tmp_path):
    g = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
    Image.fromarray(np.stack([g] * 3, axis=2)).save(tmp_path / "g.png")
    with pytest.raises(DataError, match="identical, so nothing is lost"):
        read_image(tmp_path / "g.png")
    assert np.array_equal(read_image(tmp_path / "g.png", to_gray=True), g)


def test_rgb_tiff_16_bit_to_gray_keeps_dtype(tmp_path):
    rgb = RNG.integers(0, 60000, (5, 6, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    with pytest.raises(DataError, match="RGB"):
        read_image(tmp_path / "c.tif")
    assert read_image(tmp_path / "c.tif", to_gray=True).dtype == np.uint16


def test_multi_page_tiff_is_a_stack(tmp_path):
    stack = RNG.integers(0, 1000, (5, 9, 11), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack)
    assert np.array_equal(read_stack(tmp_path / "s.tif"), stack)
    with pytest.raises(DataError, match="holds 5 frames"):
        read_image(tmp_path / "s.tif")
    assert read_stack(tmp_path / "s.tif", "mask").shape == (5, 9, 11)


def test_three_frame_stack_saved_as_rgb_gets_a_hint(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((3, 9, 11), np.uint8), photometric="rgb")
    with pytest.raises(DataError, match="stack of 3 frames, re-save it with .*photometric='minisblack'"):
        read_stack(tmp_path / "s.tif", "mask")


def test_single_image_reads_as_one_frame_stack(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", _u16())
    assert read_stack(tmp_path / "a.tif").shape == (1, 12, 17)


def test_npy_is_loaded_without_pickle(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="o.npy: not a plain numeric"):
        read_image(tmp_path / "o.npy")


def test_nan_image_refused(tmp_path):
    a = np.zeros((4, 4), np.float32)
    a[1, 1] = np.nan
    tifffile.imwrite(tmp_path / "n.tif", a)
    with pytest.raises(DataError, match="n.tif: contains NaN"):
        read_image(tmp_path / "n.tif")


def test_unreadable_file_is_a_data_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png: cannot read"):
        read_image(tmp_path / "bad.png")


# ---- reading masks -------------------------------------------------------------------------------------

def test_palette_png_mask_reads_indices_not_colours(tmp_path):
    ids = np.array([[0, 1, 2], [3, 1, 0]], np.uint8)
    img = Image.frombytes("P", (3, 2), ids.tobytes())
    img.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * (256 * 3 - 12))
    img.save(tmp_path / "m.png")
    got = read_mask(tmp_path / "m.png")
    assert np.array_equal(got, ids)


def test_16_bit_and_tiff_masks(tmp_path):
    ids = np.array([[0, 300], [7, 1]], np.uint16)
    Image.frombytes("I;16", (2, 2), ids.tobytes()).save(tmp_path / "m.png")
    tifffile.imwrite(tmp_path / "m.tif", ids)
    assert np.array_equal(read_mask(tmp_path / "m.png"), ids)
    assert np.array_equal(read_mask(tmp_path / "m.tif"), ids)


def test_rgb_mask_refused_with_how_to_convert(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(DataError) as e:
        read_mask(tmp_path / "m.png")
    text = str(e.value)
    assert str(tmp_path / "m.png") in text and "3 channels" in text and "convert('L')" in text


def test_jpeg_mask_refused(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "m.jpg")
    with pytest.raises(DataError, match="m.jpg: JPEG is lossy"):
        read_mask(tmp_path / "m.jpg")


def test_float_mask_integral_values_accepted_fractions_refused(tmp_path):
    tifffile.imwrite(tmp_path / "ok.tif", np.array([[0.0, 2.0]], np.float32))
    tifffile.imwrite(tmp_path / "bad.tif", np.array([[0.0, 0.5]], np.float32))
    assert read_mask(tmp_path / "ok.tif").tolist() == [[0, 2]]
    with pytest.raises(DataError, match="bad.tif: mask has non-integer values"):
        read_mask(tmp_path / "bad.tif")


# ---- intensity window ----------------------------------------------------------------------------------

def test_window_is_none_for_8_bit():
    assert compute_window([np.zeros((3, 3), np.uint8), np.full((2, 2), 200, np.uint8)]) is None


def test_window_percentiles_exact_for_uint16():
    images = [_u16((50, 60)), _u16((30, 20))]
    window = compute_window(images, (1.0, 99.8))
    flat = np.concatenate([a.ravel() for a in images])
    expected = np.percentile(flat, [1.0, 99.8], method="inverted_cdf")
    assert window == {"low": float(expected[0]), "high": float(expected[1]), "method": "percentile",
                      "percentiles": [1.0, 99.8]}


def test_window_percentiles_for_float_close_to_numpy():
    images = [RNG.normal(5.0, 2.0, (700, 800)).astype(np.float32)]  # above the sample cap: strided
    window = compute_window(images)
    expected = np.percentile(images[0], [1.0, 99.8])
    assert window["low"] == pytest.approx(expected[0], abs=0.05)
    assert window["high"] == pytest.approx(expected[1], abs=0.05)


def test_fixed_window_and_bad_values():
    assert compute_window([_u16()], values=(100, 4000)) == {"low": 100.0, "high": 4000.0, "method": "fixed"}
    with pytest.raises(DataError, match="need finite LO < HI"):
        compute_window([_u16()], values=(10, 10))


def test_constant_images_cannot_be_windowed():
    with pytest.raises(DataError, match="constant"):
        compute_window([np.full((4, 4), 1000, np.uint16)])


def test_estimator_mixes_integer_and_float_images():
    est = WindowEstimator()
    est.add(np.arange(100, dtype=np.uint16).reshape(10, 10))
    est.add(np.arange(100, 200, dtype=np.float32).reshape(10, 10))
    assert est.percentiles([0, 50, 100]) == [0.0, 99.0, 199.0]


def test_apply_window_maps_low_high_to_0_255_and_clips():
    window = {"low": 1000.0, "high": 2000.0, "method": "fixed"}
    out = apply_window(np.array([[500, 1000, 1500, 2000, 60000]], np.uint16), window)
    assert out.dtype == np.uint8 and out.tolist() == [[0, 0, 128, 255, 255]]


def test_apply_window_none_passes_8_bit_through():
    a = RNG.integers(0, 256, (5, 5), dtype=np.uint8)
    assert apply_window(a, None) is a
    assert apply_window(np.array([[3, 250]], np.uint16), None).tolist() == [[3, 250]]
    with pytest.raises(DataError, match="x.tif: uint16 values 3..4000"):
        apply_window(np.array([[3, 4000]], np.uint16), None, "x.tif")


# ---- colours -------------------------------------------------------------------------------------------

def test_palette_is_fixed_and_distinct():
    assert len(PALETTE) == 256 and len(set(PALETTE)) == 256
    assert PALETTE[0] == (0, 0, 0) and PALETTE[1] == (0, 255, 0) and PALETTE[2] == (255, 0, 0)
    assert PALETTE[255] == IGNORE_COLOR == (255, 255, 255)


def test_overlay_tints_classes_leaves_background():
    gray = np.full((2, 3), 100, np.uint8)
    labels = np.array([[0, 1, 2], [255, 0, 1]], np.uint8)
    out = overlay(gray, labels, alpha=0.5)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [50, 178, 50]  # halfway to green (0.5 * 100 + 0.5 * 255 = 177.5)
    assert out[0, 2].tolist() == [178, 50, 50]
    assert out[1, 0].tolist() == [178, 178, 178]
    with pytest.raises(ValueError):
        overlay(gray, labels[:, :2])


def test_save_label_png_round_trips(tmp_path):
    labels = np.array([[0, 1, 2], [255, 7, 0]], np.uint8)
    save_label_png(tmp_path / "l.png", labels)
    with Image.open(tmp_path / "l.png") as img:
        assert img.mode == "P"
        assert tuple(img.getpalette()[3:6]) == PALETTE[1]
    assert np.array_equal(read_mask(tmp_path / "l.png"), labels)
    with pytest.raises(ValueError):
        save_label_png(tmp_path / "x.png", np.array([[300]]))


# ---- 4-D stacks (time x z) -----------------------------------------------------------------------------

def test_4d_imagej_tiff_is_read_time_major_with_its_slice_count(tmp_path):
    stack = RNG.integers(0, 1000, (3, 2, 9, 11), dtype=np.uint16)  # T, Z, Y, X
    tifffile.imwrite(tmp_path / "s.tif", stack, imagej=True, metadata={"axes": "TZYX"})
    frames, slices = read_time_stack(tmp_path / "s.tif")
    assert slices == 2 and frames.shape == (6, 9, 11)
    assert np.array_equal(frames, stack.reshape(6, 9, 11))  # frame t*Z + z is slice z of time point t
    assert np.array_equal(read_stack(tmp_path / "s.tif"), frames)


def test_4d_tiff_with_z_outside_time_is_transposed_to_time_major(tmp_path):
    stack = RNG.integers(0, 1000, (2, 3, 9, 11), dtype=np.uint16)  # Z, T, Y, X
    tifffile.imwrite(tmp_path / "s.ome.tif", stack, ome=True, metadata={"axes": "ZTYX"})
    frames, slices = read_time_stack(tmp_path / "s.ome.tif")
    assert slices == 2
    assert np.array_equal(frames, stack.transpose(1, 0, 2, 3).reshape(6, 9, 11))


def test_4d_tiff_without_a_time_axis_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "q.tif", np.zeros((3, 2, 9, 11), np.uint16))  # tifffile writes axes QQYX
    with pytest.raises(DataError, match=r"q.tif: a 4-D stack of 3 x 2 x 9 x 11 .*cannot tell which axis is "
                                        r"time.*metadata=\{'axes': 'TZYX'\}"):
        read_stack(tmp_path / "q.tif")


def test_5d_tiff_with_three_long_frame_axes_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "f.ome.tif", np.zeros((2, 2, 2, 9, 11), np.uint8), ome=True,
                     metadata={"axes": "TZQYX"})
    with pytest.raises(DataError, match="f.ome.tif: 3 frame axes longer than 1"):
        read_stack(tmp_path / "f.ome.tif")


def test_4d_tiff_with_a_length_one_axis_is_a_plain_stack(tmp_path):
    stack = RNG.integers(0, 1000, (4, 1, 9, 11), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack, imagej=True, metadata={"axes": "TZYX"})
    frames, slices = read_time_stack(tmp_path / "s.tif")
    assert slices == 1 and np.array_equal(frames, stack[:, 0])


def test_4d_npy_is_time_z_unless_its_last_axis_is_colour(tmp_path):
    stack = RNG.integers(0, 1000, (3, 2, 9, 11), dtype=np.uint16)
    np.save(tmp_path / "s.npy", stack)
    frames, slices = read_time_stack(tmp_path / "s.npy")
    assert slices == 2 and np.array_equal(frames, stack.reshape(6, 9, 11))
    np.save(tmp_path / "rgb.npy", np.zeros((3, 9, 11, 3), np.uint8))
    with pytest.raises(DataError, match="rgb.npy: image is RGB"):
        read_time_stack(tmp_path / "rgb.npy")


# ---- issue 39: a header that claims a huge array is refused before allocation ------------------------------

def test_a_tiff_or_npy_header_claiming_a_huge_array_is_refused_before_reading(tmp_path):
    import struct

    from fcnseg.images import read_image
    tif = tmp_path / "huge.tif"
    tifffile.imwrite(tif, np.zeros((8, 8), np.uint8))
    raw = bytearray(tif.read_bytes())
    offset = struct.unpack_from("<I", raw, 4)[0]
    for i in range(struct.unpack_from("<H", raw, offset)[0]):
        entry = offset + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", raw, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength: 60000 x 60000 (3.6 G pixels) in a 200-byte file
            struct.pack_into("<I" if kind == 4 else "<H", raw, entry + 8, 60000)
    tif.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"huge.tif: its header claims an array of 60000x60000 .* more than fcnseg "
                                        r"decodes at once"):
        read_image(tif)
    npy = tmp_path / "huge.npy"
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000, 100), }"
    npy.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + header.ljust(117).encode() + b"\n")
    with pytest.raises(DataError, match=r"huge.npy: its header claims an array of 100000x100000x100"):
        read_image(npy)
