"""A mergeable quantile sketch with a relative-error guarantee (DDSketch's logarithmic buckets).

A positive value x goes to bucket k = ceil(log_gamma(x)) with gamma = (1 + a) / (1 - a); the
bucket's representative 2 * gamma**k / (gamma + 1) is within relative error `a` of every value
in the bucket. Negative values go to a mirrored store (by magnitude), values with
|x| <= MIN_VALUE to a zero bucket.

Guarantee (a = RELATIVE_ACCURACY = 1%): `quantile(q)` is within 1% of the exact lower-rank
quantile, the item at index floor(q * (n - 1)) of the sorted data, clamped to [min, max].
Merging adds bucket counts, so the merge of the parts' sketches is bucket for bucket the
sketch of the union: minute rollups merge into hours, rollups merge over any window.

Stores are dense (an offset and a list of counts), so a merge is one C-level `map(add)` over
a slice: merging the 720 hourly sketches of a 30-day window takes milliseconds. A store
spans about log(max/min) / log(gamma) buckets (~700 for 1 ms to 1 day); past MAX_BINS
(4,096, a range of ~10^35) the buckets nearest zero are collapsed into one, as DDSketch's
collapsing store does, and the guarantee then holds above the collapsed range only.
"""

import math
from operator import add

RELATIVE_ACCURACY = 0.01
MIN_VALUE = 1e-9
MAX_BINS = 4096


class _Store:
    """Counts of consecutive bucket keys offset, offset + 1, ..."""

    __slots__ = ("offset", "counts")

    def __init__(self, offset=0, counts=None):
        self.offset = offset
        self.counts = counts if counts is not None else []

    def _cover(self, low, high):
        """Grow to hold keys low..high-1."""
        if not self.counts:
            self.offset, self.counts = low, [0] * (high - low)
            return
        if low < self.offset:
            self.counts[0:0] = [0] * (self.offset - low)
            self.offset = low
        end = self.offset + len(self.counts)
        if high > end:
            self.counts.extend([0] * (high - end))

    def add(self, key, weight):
        if not self.counts:
            self.offset, self.counts = key, [weight]
            return
        index = key - self.offset
        if index < 0:
            self.counts[0:0] = [0] * -index
            self.offset, index = key, 0
        elif index >= len(self.counts):
            self.counts.extend([0] * (index - len(self.counts) + 1))
        self.counts[index] += weight
        if len(self.counts) > MAX_BINS:
            self._collapse()

    def merge(self, offset, counts):
        if not counts:
            return
        if not self.counts:
            self.offset, self.counts = offset, list(counts)
        else:
            self._cover(min(offset, self.offset), max(offset + len(counts), self.offset + len(self.counts)))
            start = offset - self.offset
            self.counts[start : start + len(counts)] = map(add, self.counts[start : start + len(counts)], counts)
        if len(self.counts) > MAX_BINS:
            self._collapse()

    def _collapse(self):
        excess = len(self.counts) - MAX_BINS
        self.counts[excess] += sum(self.counts[:excess])
        del self.counts[:excess]
        self.offset += excess

    def trimmed(self):
        """(offset, counts) without leading or trailing zeros."""
        counts = self.counts
        start, end = 0, len(counts)
        while start < end and not counts[start]:
            start += 1
        while end > start and not counts[end - 1]:
            end -= 1
        return self.offset + start, counts[start:end]


class Sketch:
    __slots__ = ("alpha", "gamma", "_log_gamma", "pos", "neg", "zero", "count", "min", "max")

    def __init__(self, alpha=RELATIVE_ACCURACY):
        self.alpha = alpha
        self.gamma = (1 + alpha) / (1 - alpha)
        self._log_gamma = math.log(self.gamma)
        self.pos = _Store()
        self.neg = _Store()
        self.zero = 0
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    def _value(self, key):
        return 2 * self.gamma**key / (self.gamma + 1)

    def add(self, value, weight=1):
        """Add `value` `weight` times (a weight <= 0, NaN or infinity is ignored)."""
        value = float(value)
        if weight <= 0 or value != value or value in (math.inf, -math.inf):
            return
        if value > MIN_VALUE:
            self.pos.add(math.ceil(math.log(value) / self._log_gamma), weight)
        elif value < -MIN_VALUE:
            self.neg.add(math.ceil(math.log(-value) / self._log_gamma), weight)
        else:
            self.zero += weight
        self.count += weight
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def add_finite(self, value):
        """add(value) for a finite float, weight 1, without the checks (the roll-up's hot loop)."""
        if value > MIN_VALUE:
            self.pos.add(math.ceil(math.log(value) / self._log_gamma), 1)
        elif value < -MIN_VALUE:
            self.neg.add(math.ceil(math.log(-value) / self._log_gamma), 1)
        else:
            self.zero += 1
        self.count += 1
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def merge(self, other):
        """Add another sketch's counts into this one (the sketch of the union); returns self."""
        if other.alpha != self.alpha:
            raise ValueError("cannot merge sketches of different accuracy")
        if other.count:
            self.pos.merge(other.pos.offset, other.pos.counts)
            self.neg.merge(other.neg.offset, other.neg.counts)
            self.zero += other.zero
            self.count += other.count
            self.min = min(self.min, other.min)
            self.max = max(self.max, other.max)
        return self

    def merge_json(self, data):
        """merge(from_json(data)) without building the intermediate sketch (the query hot path)."""
        if data.get("a", RELATIVE_ACCURACY) != self.alpha:
            raise ValueError("cannot merge sketches of different accuracy")
        count = data.get("c", 0)
        if not count:
            return self
        self.pos.merge(data.get("po", 0), data.get("p") or ())
        self.neg.merge(data.get("no", 0), data.get("n") or ())
        self.zero += data.get("z", 0)
        self.count += count
        self.min = min(self.min, data["lo"])
        self.max = max(self.max, data["hi"])
        return self

    def quantile(self, q):
        """The q-quantile (0 <= q <= 1), or None for an empty sketch."""
        if not 0 <= q <= 1:
            raise ValueError("q must be between 0 and 1")
        if not self.count:
            return None
        rank = q * (self.count - 1)
        seen = 0
        value = None
        counts = self.neg.counts
        for index in range(len(counts) - 1, -1, -1):  # largest magnitude (most negative) first
            seen += counts[index]
            if seen > rank:
                value = -self._value(self.neg.offset + index)
                break
        if value is None:
            seen += self.zero
            if seen > rank:
                value = 0.0
        if value is None:
            counts = self.pos.counts
            for index, n in enumerate(counts):
                seen += n
                if seen > rank:
                    value = self._value(self.pos.offset + index)
                    break
        if value is None:  # rounding of fractional weights
            value = self.max
        return min(max(value, self.min), self.max)

    def to_json(self):
        pos_offset, pos = self.pos.trimmed()
        neg_offset, neg = self.neg.trimmed()
        data = {"a": self.alpha, "c": self.count, "z": self.zero}
        if pos:
            data["po"], data["p"] = pos_offset, pos
        if neg:
            data["no"], data["n"] = neg_offset, neg
        if self.count:
            data["lo"], data["hi"] = self.min, self.max
        return data

    @classmethod
    def from_json(cls, data):
        return cls(data.get("a", RELATIVE_ACCURACY)).merge_json(data)
