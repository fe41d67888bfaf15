"""Where the training loop's batches come from: the `DataSource` protocol and `PipelineData`, the
adapter over the TFDS datasets (`pcam_jax.data.pipeline`, or the uint8 cache with
``data.augment_on="device"``), clinician lesion labels joined to the train split by path."""

from __future__ import annotations

from typing import Iterable, Iterator, Protocol

import jax

from pcam_jax.data import HELDOUT_MASK_SPLIT, clinician_labels, normal_images, resolve_data_dir


class DataSource(Protocol):
    """Where the loop's batches come from (numpy dicts per `pcam_jax.data`, per process)."""

    steps_per_epoch: int   # whole batches per epoch of the train split

    def train_batches(self, *, seed: int, start_step: int) -> Iterator[dict]: ...
    def eval_batches(self) -> Iterable[dict]: ...
    def labelled_batches(self, *, seed: int, start_step: int) -> Iterator[dict]: ...
    def heldout_mask_batches(self, limit: int) -> Iterable[dict] | None: ...


class PipelineData:
    """`DataSource` over the TFDS datasets through `pcam_jax.data.pipeline`."""

    def __init__(self, config, data_dir: str | None = None):
        from pcam_jax.data import pipeline

        self._pipeline, self._config = pipeline, config
        self._data_dir = resolve_data_dir(config, data_dir)
        self._process = dict(process_index=jax.process_index(), process_count=jax.process_count())
        self._records = {}
        self.steps_per_epoch = pipeline.steps_per_epoch(
            config, pipeline.num_examples(config, "train", self._data_dir), jax.process_count())

    def _split(self, split: str):
        if split not in self._records:
            records = self._pipeline.load_records(self._config, split, self._data_dir)
            if split == "train":  # clinician lesion labels (config.stage3.lesion_labels) join by path
                records = clinician_labels.training_records(self._config, records, self._split("model_selection"))
            self._records[split] = records
        return self._records[split]

    def uint8_split(self, split: str, *, progress: bool = False):
        """The split as uint8 at training size (`pcam_jax.data.uint8_cache.SplitCache`), built
        from the records this source trains on when absent or stale (``data.augment_on="device"``
        reads it; ``pcam-jax prepare`` builds it ahead)."""
        from pcam_jax.data import uint8_cache

        return uint8_cache.open_or_build(
            self._config, split, self._data_dir, lambda: self._split(split),
            self._pipeline.num_examples(self._config, split, self._data_dir), progress=progress)

    def _uint8(self, split: str):
        from pcam_jax.data import uint8_cache

        return uint8_cache, self.uint8_split(split)

    def _train_stream(self, stream: str, seed: int, start_step: int, **options):
        """``train_batches`` or ``labelled_batches`` of the train split: from the uint8 cache
        (augmented on the device) or through the tf.data pipeline (augmented on the host)."""
        if self._config.data.augment_on == "device":
            source, records = self._uint8("train")
        else:
            source, records = self._pipeline, self._split("train")
        return getattr(source, stream)(self._config, records, seed=seed, start_step=start_step, **self._process, **options)

    def train_batches(self, *, seed, start_step):
        return self._train_stream("train_batches", seed, start_step)

    def eval_batches(self):
        return self._pipeline.eval_batches(self._config, self._split("model_selection"), **self._process)

    def heldout_mask_batches(self, limit):
        """The first ``limit`` annotated records of the dataset's held-out mask split, as eval
        batches (`pcam_jax.data.HELDOUT_MASK_SPLIT`); None where the dataset has no such split."""
        split = HELDOUT_MASK_SPLIT.get(self._config.data.dataset)
        if split is None:
            return None
        records = self._split(split).filter(lambda r: r["has_mask"]).take(int(limit))
        if self._pipeline.count_records(records) == 0:
            return None
        return self._pipeline.eval_batches(self._config, records, **self._process)

    def labelled_batches(self, *, seed, start_step):
        labelled = self._train_stream("labelled_batches", seed, start_step)
        if not normal_images.per_process(self._config, jax.process_count()):
            return labelled   # else normal images follow the labelled few in each batch, masks emptied
        return map(normal_images.append, labelled, self._train_stream("labelled_batches", seed, start_step, normal=True))
