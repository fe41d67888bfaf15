"""`pcam_jax.configs.complete`: a checkpoint's config read back onto today's defaults, with the old
behaviour's value for a field the checkpoint predates; and the resume check it feeds."""

from pcam_jax import configs
from pcam_jax.training import checkpointing


def _without(tree: dict, dotted: str) -> dict:
    section, field = dotted.split(".")
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    del out[section][field]
    return out


def test_saved_values_win_and_absent_fields_take_the_old_behaviour_or_the_default():
    saved = configs.to_json_dict(configs.get_config("tiny"))
    saved["stage2"]["omega"] = 7.0
    old = _without(_without(_without(saved, "stage2.masked_batch_norm"), "eval.trust_images"), "stage2.sigma")
    old["retired"] = {"field": 1}            # a section today's base no longer has is kept as it is
    got = configs.complete(old)
    assert got.stage2.omega == 7.0 and got.model.widths == [4, 8]                 # saved values
    assert got.stage2.masked_batch_norm == "running"   # predates the field: the behaviour it trained with
    assert got.eval.trust_images == 0                  # (base.py says "batch" and 16 today)
    assert got.stage2.sigma == 0.5                     # absent, same behaviour as today: the default
    assert got.retired.field == 1
    assert configs.complete({}).stage3.lesion_loss == configs.get_config("base").stage3.lesion_loss
    assert set(configs.BEFORE_THE_FIELD) <= {f"{s}.{k}" for s, v in configs.to_json_dict(configs.get_config()).items()
                                             if isinstance(v, dict) for k in v}


def test_a_checkpoint_older_than_a_field_resumes_when_its_behaviour_is_today_s():
    now = configs.to_json_dict(configs.get_config("tiny"))
    old = _without(now, "stage2.sigma")
    # Before: "<absent>" vs the default was a mismatch; now the completed config matches.
    assert checkpointing.config_differences(configs.to_json_dict(configs.complete(old)), now, 2) == []
    # A field whose old behaviour differs from today's default is a real difference, named.
    older = _without(now, "stage2.masked_batch_norm")
    assert checkpointing.config_differences(configs.to_json_dict(configs.complete(older)), now, 2) == [
        "stage2.masked_batch_norm: checkpoint 'running', now 'batch'"]
