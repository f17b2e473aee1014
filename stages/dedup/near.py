"""What the near-duplicate stages share: keep rules, the persisted index, exact
verification of candidate pairs, connected components, and the final marking.

A near-duplicate stage turns each sample into one *signature row* (`_sig`, its
label, plus whatever finding and verifying need), finds verified *edges* between
labels (its own business: MinHash bands, pHash chunks), and leaves the rest here:

    signature rows -> edges -> connected components (min-label propagation) -> apply

A label is "<rank>|<sample_id>" with the rank from the keep rule, so the minimum
label of a component names its survivor. Samples of an index from an earlier run
rank "!", before every new one: they always survive. The index holds what this
stage kept; stages after it may still reject some of those, so put dedup after the
filters when the index should match what is published. Rounds of propagation
grow with a cluster's diameter (a chain of k near-copies takes about k rounds).
All of it runs as Ray task shuffles (pipeline.shuffle): the driver holds
references and a count per partition per round, never the graph.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import fs, ledger
from pipeline.shuffle import (
    MAP_TASKS,
    PART,
    apply_by_part,
    hash_partition,
    map_tables,
    partition_of,
)
from pipeline.stage import Resources, Stage
from pipeline.watchdog import gather

from .keep import EARLIER, labels, rank_columns

ROWS_PER_PARTITION = 200_000  # rows of the widest shuffle that one task holds, about


class NearDuplicates(Stage):
    """Base of dedup_minhash, dedup_phash and dedup_audio. Subclasses give signature_rows, find_edges,
    index_settings, size_of, payload_columns and similarity (words for the reject detail)."""

    kind = "global"
    resources = Resources(num_cpus=1)

    # -- what a subclass provides -----------------------------------------------------
    def signature_rows(self, table: pa.Table) -> pa.Table:
        """One row per comparable sample: `_sig` (its label) and the columns find_edges needs."""
        raise NotImplementedError

    def find_edges(self, sigs: list, n: int, old: list = ()) -> list:
        """References to tables of verified edges (`_node`, `_peer`), both directions, among
        the new signature rows `sigs` and between them and the rows `old` of the indexes
        in `against` (which enter a shuffle only where they can meet a new row: `meeting`)."""
        raise NotImplementedError

    def index_settings(self) -> dict[str, Any]:
        """What an index must have been built with to be comparable with this stage."""
        raise NotImplementedError

    def size_of(self, table: pa.Table) -> list[int]:
        """The size that keep=largest compares."""
        raise NotImplementedError

    def payload_columns(self) -> list[str]:
        """The columns signature_rows reads besides the keep rule's (media arrive as bytes)."""
        raise NotImplementedError

    size_columns: list[str] = []  # the columns size_of may read
    similarity = "near-duplicate"  # words for the reject detail: "<similarity> of <keeper>"
    cluster_prefix = "n"  # cluster_id = prefix + the survivor's sample_id

    def reads(self) -> list[str]:
        keep = self.params.keep
        return self.payload_columns() + ([keep[4:]] if keep.startswith("max:") else [])

    def adds(self):
        from pipeline.stage import Column

        return [Column("cluster_id")]

    def rank_columns(self) -> list[str]:
        return rank_columns(self.params.keep, self.size_columns)

    def describe(self) -> str:
        return ""

    def labels_of(self, table: pa.Table) -> list[str]:
        """The keep rule as a sortable label per row (stages.dedup.keep)."""
        return labels(table, self.params.keep, self.size_of)

    # -- the persisted index --------------------------------------------------------------
    def external_inputs(self) -> list[str]:
        """The indexes in `against`: one that grew since reruns this stage."""
        return list(self.params.against)

    def _index_parts(self) -> list[str]:
        """Parts of the indexes in `against`, after checking that they were made alike."""
        parts = []
        ours = {"stage": self.name} | self.index_settings()
        for index in self.params.against:
            try:
                made = json.loads(fs.read_bytes(fs.join(index, "index.json")))
            except FileNotFoundError:
                raise ValueError(f"{index}: no index.json: not a {self.name} index") from None
            theirs = {k: made.get(k) for k in ours}
            if theirs != ours:
                raise ValueError(f"{index} was built with {theirs}; this stage has {ours}: they must match")
            parts += [fs.join(index, i.path.rsplit("/", 1)[1]) for i in fs.list_files(index)
                      if i.path.endswith(".parquet")]
        return parts

    def _relabel(self, sig: pa.Table) -> pa.Table:
        """An index's samples rank before every new one (EARLIER sorts first): they survive;
        those `superseded` (their input changed) are not there any more."""
        ids = [lbl.split("|", 1)[1] for lbl in sig.column("_sig").to_pylist()]
        if self.params.superseded:
            gone = set(self.params.superseded)
            keep = [i not in gone for i in ids]
            sig, ids = sig.filter(pa.array(keep, pa.bool_())), [i for i, k in zip(ids, keep) if k]
        return sig.set_column(sig.schema.get_field_index("_sig"), "_sig", pa.array([f"{EARLIER}|{i}" for i in ids],
                                                                                   pa.string()))

    # -- the run --------------------------------------------------------------------------
    def run_global(self, ds, ctx) -> list[dict[str, Any]]:
        index_parts = self._index_parts()
        indexed = sum(fs.parquet_rows(index) for index in self.params.against)  # may meet the new ones
        n = max(1, math.ceil((ctx.upstream_kept + indexed) * self.rows_per_sample() / ROWS_PER_PARTITION))
        ranked = self.rank_columns()
        ctx.phase(f"{self.describe()}"
                + (f"; against {len(index_parts)} index parts" if index_parts else ""))
        ctx.phase(f"signatures of {ctx.upstream_kept} samples, candidate pairs by bucket, exact verification "
                  f"({n} partitions)")
        sigs = map_tables(ctx.parts, self.signature_rows, columns=list(dict.fromkeys(ranked + self.payload_columns())),
                          streams=self.streams(), together=max(1, len(ctx.parts) // MAP_TASKS))
        edges = self.find_edges(sigs, n, map_tables(index_parts, self._relabel))
        settled, rounds = components(edges, n, phase=ctx.phase)
        ctx.phase(f"connected components settled in {rounds} rounds")
        index_tmp = ctx.run.tmp_dir("index", self.name) if self.params.write_index else None
        stage = self

        def assign(table: pa.Table) -> np.ndarray:  # everything about one sample meets in one partition
            for col in ("_node", "_sig"):
                if col in table.column_names:
                    ids = [k.split("|", 1)[1] for k in table.column(col).to_pylist()]
                    return partition_of(pa.array(ids, pa.string()), n)
            return partition_of(table.column("sample_id"), n)

        def decide(part: int, table: pa.Table) -> pa.Table:
            is_label, is_sig = pc.is_valid(table.column("_node")), pc.is_valid(table.column("_sig"))
            found = table.filter(is_label)
            component = dict(zip(found.column("_node").to_pylist(), found.column("_label").to_pylist()))
            sig = table.filter(is_sig)
            data = table.filter(pc.invert(pc.or_(is_label, is_sig)))
            data = data.drop_columns(["_node", "_label"] + sig_columns)
            if index_tmp:  # the survivors' signatures, for later runs to be checked against (no empty parts)
                sig = sig.select(sig_columns)
                survives = pa.array([component.get(lbl, lbl) == lbl for lbl in sig.column("_sig").to_pylist()],
                                    pa.bool_())
                kept_sigs = sig.filter(survives)
                if kept_sigs.num_rows:
                    fs.write_parquet(fs.join(index_tmp, f"part-{part:06d}.parquet"), kept_sigs)
            return stage.mark(data, component).select(["sample_id", PART, "reject", "cluster_id"])

        sig_columns = _column_names_of(sigs[0]) if sigs else ["_sig"]
        decided = hash_partition(list(ctx.parts) + [_only_labels.remote(r) for r in settled] + sigs, n, assign,
                                 decide, fetch=False, columns=ranked, tag_first=len(ctx.parts))
        ctx.phase(f"applying the decisions to {len(ctx.parts)} parts")
        stats = apply_by_part(ctx.parts, decided, ctx.writer)
        if index_tmp:
            made = {"stage": self.name} | self.index_settings()
            fs.write_bytes(fs.join(index_tmp, "index.json"), json.dumps(made, indent=1).encode())
            fs.replace_dir(index_tmp, fs.join(ctx.run.root, "index", self.params.index_name or self.name))
        return stats

    def rows_per_sample(self) -> int:
        """Rows one sample makes in the widest shuffle (sizes the partitions)."""
        return 1

    def mark(self, table: pa.Table, component: dict[str, str]) -> pa.Table:
        """Reject every member of a component but its minimum label."""
        rejects, clusters = [], []
        for label in self.labels_of(table):
            root = component.get(label)
            cluster = f"{self.cluster_prefix}{root.split('|', 1)[1]}" if root else None
            clusters.append(cluster)
            keeper = root.split("|", 1)[1] if root else None
            if root and root != label and keeper != label.split("|", 1)[1]:  # never a duplicate of itself
                earlier = root.startswith(EARLIER)  # a sample of an index we were pointed at
                reason = self.params.against_reason if earlier else "duplicate"
                where = " in an earlier index" if earlier else ""
                rejects.append(ledger.reject(reason, f"{self.similarity} of {keeper}{where}",
                                             duplicate_of=keeper, cluster_id=cluster))
            else:
                rejects.append(None)
        table = ledger.set_column(table, "cluster_id", pa.array(clusters, pa.string()))
        return ledger.stamp_stage(ledger.with_rejects(table, rejects), self.name)


def _column_names_of(ref) -> list[str]:
    import ray

    return ray.get(_column_names.remote(ref))


# -- an index's rows that can meet the new ones ----------------------------------------------
def meeting(new: list, new_columns: list[str], old: list, column: str) -> list:
    """The rows of `old` whose `column` holds a value found in the `new_columns` of `new`
    (a semi-join, as tasks: one gathers the new values, one per old part filters). An
    index's rows that share no bucket (or pair) with a new sample stay out of the
    shuffles, so a refresh costs what is new, not everything published before. Pairs
    among old rows alone are not looked for either (`among_earlier`): they were
    deduplicated when their index was written."""
    if not old:
        return []
    wanted = _values.remote(new_columns, *new)
    return [_having.remote(t, column, wanted) for t in old]


def among_earlier(a: str, b: str) -> bool:
    """Both labels are an index's samples: a pair find_edges does not make."""
    return a[0] == EARLIER and b[0] == EARLIER


# -- verification of candidate pairs by a payload column -----------------------------------
def verify_pairs(pairs: list, sigs: list, n: int, payload: str,
                 similar: Callable[[pa.Array, pa.Array], np.ndarray]) -> list:
    """Candidate pairs (`_a`, `_b`) whose signature rows' `payload` pass similar(a's, b's),
    which takes the payloads of many pairs at once as two Arrow arrays (position i holds
    pair i's) and returns a boolean mask (`each_pair` makes one of a function of two):
    edges both ways. Two joins by label, each a shuffle: the pair picks up a's payload
    where a's signature row is, then meets b's. Payloads stay Arrow arrays throughout."""
    def attach(_: int, t: pa.Table) -> pa.Table:
        is_sig = pc.is_valid(t.column("_sig"))
        sig = t.filter(is_sig)
        # A pair found in several buckets arrives several times: kept once before payloads ride along.
        pairs = t.filter(pc.invert(is_sig)).select(["_a", "_b"]).group_by(["_a", "_b"]).aggregate([])
        at = pc.index_in(pairs.column("_a"), value_set=sig.column("_sig").combine_chunks())
        found = pc.is_valid(at)
        return pairs.filter(found).append_column("_pay", sig.column(payload).take(at.filter(found)))

    def verify(_: int, t: pa.Table) -> pa.Table:
        is_sig = pc.is_valid(t.column("_sig"))
        sig = t.filter(is_sig)
        pairs = t.filter(pc.invert(is_sig))
        at = pc.index_in(pairs.column("_b"), value_set=sig.column("_sig").combine_chunks())
        found = pc.is_valid(at)
        pairs = pairs.filter(found)
        if not pairs.num_rows:
            return edges_table([], [])
        ok = pa.array(similar(pairs.column("_pay").combine_chunks(),
                              sig.column(payload).take(at.filter(found)).combine_chunks()), pa.bool_())
        a, b = pairs.column("_a").filter(ok), pairs.column("_b").filter(ok)
        return pa.table({"_node": pa.chunked_array(a.chunks + b.chunks, pa.string()),
                         "_peer": pa.chunked_array(b.chunks + a.chunks, pa.string())})

    only = [_select.remote(s, ["_sig", payload]) for s in sigs]
    with_a = hash_partition(list(pairs) + only, n, label_of("_a", n), attach, fetch=False)
    return hash_partition(with_a + only, n, label_of("_b", n), verify, fetch=False)


def each_pair(similar: Callable[[Any, Any], bool]) -> Callable[[pa.Array, pa.Array], np.ndarray]:
    """verify_pairs' `similar` from a function of one pair's two payloads (a list arrives
    as an array, a struct as its dict)."""
    def all_pairs(a: pa.Array, b: pa.Array) -> np.ndarray:
        return np.array([similar(_value(x), _value(y)) for x, y in zip(a.to_pylist(), b.to_pylist())], bool)
    return all_pairs


def _value(x: Any) -> Any:
    return x if isinstance(x, dict) else np.asarray(x)


def smallest_in_components(count: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For nodes 0..count-1 joined by the pairs (a[i], b[i]): the smallest node of each one's component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    return np.unique(component, return_index=True)[1][component]  # the first node of each is the smallest


def edges_table(src: list[str], dst: list[str]) -> pa.Table:
    return pa.table({"_node": pa.array(src, pa.string()), "_peer": pa.array(dst, pa.string())})


def label_of(column: str, n: int):
    """Partition pair rows by one of their labels, and signature rows by theirs, alike."""
    def assign(table: pa.Table) -> np.ndarray:
        return partition_of(table.column(column if column in table.column_names else "_sig"), n)
    return assign


def by_column(column: str, n: int, numeric: bool = False):
    def assign(table: pa.Table) -> np.ndarray:
        if numeric:
            return (table.column(column).to_numpy().astype(np.uint64) % np.uint64(n)).astype(np.int64)
        return partition_of(table.column(column), n)
    return assign


# -- connected components -------------------------------------------------------------------
_EMPTY_LABELS = {"_node": pa.string(), "_label": pa.string(), "_changed": pa.int64()}


def _propagate(_: int, t: pa.Table) -> pa.Table:
    """Per node: its current label goes to every peer, and stays with the node as its old label."""
    is_label = pc.is_valid(t.column("_label"))
    held = t.filter(is_label)
    current = dict(zip(held.column("_node").to_pylist(), held.column("_label").to_pylist()))
    edges = t.filter(pc.invert(is_label))
    nodes, labels, old = list(current), list(current.values()), list(current.values())
    for node, peer in zip(edges.column("_node").to_pylist(), edges.column("_peer").to_pylist()):
        nodes.append(peer)
        labels.append(current.get(node, node))
        old.append(None)
    return pa.table({"_node": pa.array(nodes, pa.string()), "_label": pa.array(labels, pa.string()),
                     "_old": pa.array(old, pa.string())})


def _settle(_: int, t: pa.Table) -> pa.Table:
    """Per node: the smallest label it heard; _changed marks nodes whose label moved."""
    if not t.num_rows:
        return pa.table({k: pa.array([], v) for k, v in _EMPTY_LABELS.items()})
    best = t.group_by("_node").aggregate([("_label", "min"), ("_old", "min")])
    changed = pc.cast(pc.not_equal(best.column("_label_min"), pc.coalesce(best.column("_old_min"), "")), pa.int64())
    return pa.table({"_node": best.column("_node"), "_label": best.column("_label_min"), "_changed": changed})


def _seed(_: int, t: pa.Table) -> pa.Table:
    """Every node of the graph starts with its own label (its rank and id)."""
    nodes = pc.unique(t.column("_node")) if t.num_rows else pa.array([], pa.string())
    return pa.table({"_node": nodes, "_label": nodes, "_changed": pa.array([1] * len(nodes), pa.int64())})


def components(edges: list, n: int, max_rounds: int = 1000, phase=lambda text: None) -> tuple[list, int]:
    """Min-label propagation over the edge partitions until no label moves.

    Each round sends every node's label to its neighbours and keeps the minimum. No
    process sees more than one partition of edges or labels: the driver holds
    references, and one count per partition per round.
    """

    nodes = by_column("_node", n)
    labels = hash_partition(edges, n, nodes, _seed, fetch=False)
    for rounds in range(1, max_rounds + 1):
        messages = hash_partition(list(edges) + [_only_labels.remote(r) for r in labels], n, nodes,
                                  _propagate, fetch=False)
        labels = hash_partition(messages, n, nodes, _settle, fetch=False)
        moved = sum(gather([_changed.remote(r) for r in labels]))
        phase(f"components round {rounds}: {moved} labels moved")
        if moved == 0:
            return labels, rounds
    raise RuntimeError(f"connected components did not settle in {max_rounds} rounds")


def _remote(fn):
    import ray

    return ray.remote(fn)


@_remote
def _only_labels(t: pa.Table) -> pa.Table:
    return t.select(["_node", "_label"])


@_remote
def _select(t: pa.Table, columns: list[str]) -> pa.Table:
    return t.select(columns)


@_remote
def _column_names(t: pa.Table) -> list[str]:
    return t.column_names


@_remote
def _changed(t: pa.Table) -> int:
    return int(pc.sum(t.column("_changed")).as_py() or 0)


@_remote
def _values(columns: list[str], *tables: pa.Table) -> pa.Array | None:
    found = [pc.unique(t.column(c)) for t in tables if t.num_rows for c in columns]
    return pc.unique(pa.concat_arrays(found)) if found else None


@_remote
def _having(t: pa.Table, column: str, wanted: pa.Array | None) -> pa.Table:
    if wanted is None or not t.num_rows:
        return t.slice(0, 0)
    return t.filter(pc.is_in(t.column(column), value_set=wanted))
