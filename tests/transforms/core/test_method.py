"""``--reference_compat`` is one object: every setting it changes, in one place."""

from transforms.core.method import Method


def test_the_reference_way_sets_windows_padding_and_the_models_own_precision():
    ours = Method(max_tokens=128, overlap=32)
    ref = Method(reference_compat=True, max_tokens=128, overlap=32)
    assert (ours.window, ours.pad_to) == (128, None)
    assert (ref.window, ref.pad_to) == (512, 512)  # the reference scripts' windows, padded
    assert (ours.precision("auto"), ours.backend("auto"), ours.batch_tokens(256)) == (
        "auto", "auto", 256)
    assert (ref.precision("auto"), ref.backend("auto"), ref.batch_tokens(256)) == (
        "fp32", "torch", 512)
    assert (ref.precision("bf16"), ref.backend("openvino")) == ("bf16", "openvino")  # asked
