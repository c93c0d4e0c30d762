"""``TrainingDataset``: the samples of one training, with consistent keys (``training.md`` §3.8)."""

from __future__ import annotations

from typing import Any, Iterator, List, Optional, Set

from compox.training.TrainingSample import TrainingSample


def _keys(sample: TrainingSample) -> Set[str]:
    return {key for entry in sample.get_file_list() for key in entry}


class TrainingDataset:
    """A list of :class:`TrainingSample` whose key sets all agree."""

    def __init__(self, samples: List[TrainingSample]) -> None:
        self._samples: List[TrainingSample] = []
        for sample in samples:
            self.add_sample(sample)

    def add_sample(self, sample: TrainingSample) -> None:
        if self._samples and _keys(sample) != _keys(self._samples[0]):
            raise ValueError("Inconsistent file keys across samples in the dataset")
        self._samples.append(sample)

    def __len__(self) -> int:
        return len(self._samples)

    def __iter__(self) -> Iterator[TrainingSample]:
        return iter(self._samples)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, slice)):
            return self._samples[index]
        if isinstance(index, tuple) and len(index) == 2:
            which, key = index
            if isinstance(which, int):
                return self._one(self._samples[which], key)
            if isinstance(which, slice):
                return [self._one(sample, key) for sample in self._samples[which]]
        raise TypeError(f"Unsupported dataset index {index!r}.")

    @staticmethod
    def _one(sample: TrainingSample, key: Any) -> Any:
        if isinstance(key, str):
            return sample[:, key]
        if key == slice(None):
            return sample[:, :]
        return sample[key]

    def __add__(self, other: Any) -> "TrainingDataset":
        if isinstance(other, TrainingSample):
            return TrainingDataset(self._samples + [other])
        if isinstance(other, TrainingDataset):
            return TrainingDataset(self._samples + other._samples)
        raise TypeError(f"Cannot add {type(other).__name__} to a TrainingDataset.")

    def get_all_samples(self) -> List[TrainingSample]:
        return list(self._samples)

    def get_sample_by_id(self, sample_id: str) -> Optional[TrainingSample]:
        return next((s for s in self._samples if s.sample_id == sample_id), None)

    def get_sample_keys(self) -> List[str]:
        return self._samples[0].get_key_list() if self._samples else []

    def get_all_file_lists(self) -> List[List[dict]]:
        return [sample.get_file_list() for sample in self._samples]

    def __repr__(self) -> str:
        return f"TrainingDataset(num_samples={len(self)}, schema={self.get_sample_keys()})"


__all__ = ["TrainingDataset"]
