"""A seeded reservoir over row ids, shared by every layer of one capture.

Each row of the data stream (a sample, or a (sample, position) pair of a sequence) gets an
independent Uniform(0, 1) key from a seeded generator; the reservoir keeps the ``capacity``
rows with the smallest keys seen so far.  The kept set is therefore a uniform random subset
of the whole stream, whatever the batch sizes and however late a row arrives (bottom-k
sampling; Efraimidis & Spirakis 2006 with equal weights).  Because the decision depends only
on the row's key, deciding once per batch and applying that decision to every layer keeps all
layers on exactly the same rows, which I(T_prev; T) needs.
"""

from __future__ import annotations

import torch

from ibtools.errors import InputError


class RowReservoir:
    """Decide, batch by batch, which rows enter which storage slot.

    Parameters
    ----------
    capacity : int or None
        Maximum number of rows kept.  ``None`` keeps every row (slots are then the row
        numbers of the stream).
    seed : int
        Seed of the key generator.

    Notes
    -----
    Empty slots carry placeholder keys above 1, ordered so that slots fill 0, 1, 2, ... in
    stream order; after the reservoir is full, a new row replaces the slot of the kept row
    with the largest key.  Each row id seen is ``n_seen`` at arrival plus its batch index.
    """

    def __init__(self, capacity: int | None, seed: int = 0):
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int)
                                     or capacity < 1):
            raise InputError(f"max_rows={capacity!r} must be a positive int or None (keep all)")
        self.capacity = capacity
        self.n_seen = 0
        self._gen = torch.Generator().manual_seed(int(seed))
        if capacity is not None:
            self.slot_keys = 2.0 + torch.arange(capacity, 0, -1, dtype=torch.float64)
            self.slot_rows = torch.full((capacity,), -1, dtype=torch.int64)
        else:
            self.slot_rows = torch.empty(0, dtype=torch.int64)

    @property
    def n_kept(self) -> int:
        """Rows currently stored."""
        return int((self.slot_rows >= 0).sum()) if self.capacity is not None else self.n_seen

    def offer(self, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Offer the next ``n_rows`` rows of the stream.

        Returns
        -------
        batch_index : LongTensor (m,)
            Which rows of this batch (0..n_rows-1) are stored, ascending.
        slots : LongTensor (m,)
            The storage slot each of them goes to (overwriting what was there).
        """
        start = self.n_seen
        self.n_seen += n_rows
        if self.capacity is None:
            idx = torch.arange(n_rows, dtype=torch.int64)
            self.slot_rows = torch.cat([self.slot_rows, idx + start])
            return idx, idx + start
        keys = torch.rand(n_rows, generator=self._gen, dtype=torch.float64)
        all_keys = torch.cat([self.slot_keys, keys])
        kept = torch.topk(all_keys, self.capacity, largest=False).indices
        is_new = kept >= self.capacity
        batch_index = torch.sort(kept[is_new] - self.capacity).values
        survivors = torch.zeros(self.capacity, dtype=torch.bool)
        survivors[kept[~is_new]] = True
        slots = torch.nonzero(~survivors).flatten()  # ascending, as many as new rows
        self.slot_keys[slots] = keys[batch_index]
        self.slot_rows[slots] = batch_index + start
        return batch_index, slots

    def kept_rows(self) -> torch.Tensor:
        """Row ids held in slots ``0..n_kept-1`` (slot order)."""
        return self.slot_rows[: self.n_kept].clone()
