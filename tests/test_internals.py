"""cvrl_tf/runtime/internals.py: every TensorFlow or gin internal cvrl_tf needs still exists in
the installed versions, and one that an upgrade removed fails loudly, naming it."""
import pytest

from cvrl_tf.runtime import internals


def test_every_internal_resolves_in_the_installed_versions():
    names = internals.check_all()
    assert "gin.config._FILE_READERS" in names and len(names) == 9


def test_op_determinism_can_be_read_and_scoped():
    was = internals.op_determinism_enabled()
    internals.set_op_determinism(True)
    try:
        assert internals.op_determinism_enabled()
    finally:
        internals.set_op_determinism(was)
    assert internals.op_determinism_enabled() == was


def test_a_removed_internal_is_named_in_one_sentence(monkeypatch):
    import tensorflow.python.framework.config as framework_config  # pylint: disable=C0415
    monkeypatch.delattr(framework_config, "is_op_determinism_enabled")
    with pytest.raises(internals.MissingInternal,
                       match=r"tensorflow\.python\.framework\.config\.is_op_determinism_enabled "
                             r"is gone .* cvrl_tf uses it to scope op determinism"):
        internals.op_determinism_enabled()


def test_gin_lookups_become_safe_once():
    import gin  # pylint: disable=import-outside-toplevel
    internals.make_gin_lookups_safe()
    internals.make_gin_lookups_safe()
    readers = gin.config._FILE_READERS  # pylint: disable=protected-access
    assert all(getattr(exists, "cvrl_tf_safe", False) for _, exists in readers)
    assert all(not getattr(getattr(exists, "__wrapped__", None), "cvrl_tf_safe", False)
               for _, exists in readers)
