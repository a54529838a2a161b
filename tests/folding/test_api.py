"""fold()/count_bn() contracts: no mutation, shared initializers, names, outputs, report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from bnfold.contract import compare
from bnfold.folding import count_bn, fold
from bnfold.folding.graph import Graph
from bnfold.folding.passes import PassManager
from bnfold.folding.report import FoldSummary

CONV_BN = """
g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z) {
    y = Conv (x, w, b)
    z = BatchNormalization (y, gamma, beta, mean, var)
}"""
STATS = {"gamma": [4], "beta": [4], "mean": [4], "var": [4]}


def test_fold_does_not_mutate_its_input(build):
    model = build(CONV_BN, w=[4, 3, 3, 3], b=[4], **STATS)
    before = model.SerializeToString()
    fold(model)
    assert model.SerializeToString() == before


def test_shared_weight_is_copied_not_changed(build, check):
    model = build(
        """
        g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z, float[N, 4, 4, 4] u) {
            y = Conv (x, w, b)
            z = BatchNormalization (y, gamma, beta, mean, var)
            u = Conv (x, w, b)
        }""",
        w=[4, 3, 3, 3],
        b=[4],
        **STATS,
    )
    folded, _, ops = check(model)
    assert ops == {"Conv": 2}
    inits = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    second = folded.graph.node[1] if folded.graph.node[1].output[0] == "u" else folded.graph.node[0]
    assert second.input[1:] == ["w", "b"]
    np.testing.assert_array_equal(inits["w"], original["w"])
    first = next(n for n in folded.graph.node if n.output[0] == "z")
    assert first.input[1] != "w" and first.input[1] in inits


def test_value_names_keep_their_meaning(build, tools):
    """Every tensor name present in both graphs holds the same values (verify relies on it)."""
    model = build(
        """
        g (float[N, 3, 10, 10] x) => (float[N, 5] z) {
            c = Conv (x, w1, b1)
            r = Relu (c)
            y = BatchNormalization (r, gamma, beta, mean, var)
            p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (y)
            d = Dropout (p)
            c2 = Conv (d, w2, b2)
            f = Flatten (c2)
            z = Gemm <transB = 1> (f, w3, b3)
        }""",
        w1=[4, 3, 3, 3],
        b1=[4],
        w2=[2, 4, 3, 3],
        b2=[2],
        w3=[5, 8],
        b3=[5],
        **STATS,
    )
    folded, _ = fold(model)
    ref_values = {v for n in model.graph.node for v in n.output}
    common = sorted(ref_values & {v for n in folded.graph.node for v in n.output})
    assert {"c", "r", "c2", "f", "z"} <= set(common)
    assert "y" not in common and "p" not in common  # they changed meaning, so they were renamed

    def with_outputs(m: onnx.ModelProto) -> onnx.ModelProto:
        m = onnx.ModelProto.FromString(m.SerializeToString())
        existing = {o.name for o in m.graph.output}
        m.graph.output.extend(onnx.ValueInfoProto(name=v) for v in common if v not in existing)
        return m

    def outputs(m: onnx.ModelProto) -> dict[str, np.ndarray]:
        m = with_outputs(m)
        names = [o.name for o in m.graph.output]
        return dict(zip(names, tools.run(m, tools.random_feeds(model)), strict=True))

    ref, out = outputs(model), outputs(folded)
    for name in common:
        assert compare(ref[name], out[name], min_top1=0.0).passed, name


def test_bn_output_as_graph_output_keeps_its_name(build, check):
    model = build(
        """
        g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z, float[N, 2, 4, 4] u) {
            y = Conv (x, w, b)
            z = BatchNormalization (y, gamma, beta, mean, var)
            u = Conv (z, w2)
        }""",
        w=[4, 3, 3, 3],
        b=[4],
        w2=[2, 4, 1, 1],
        **STATS,
    )
    folded, report, ops = check(model)
    assert ops == {"Conv": 2}
    assert [o.name for o in folded.graph.output] == ["z", "u"]
    assert report.bns[0].rules[0].startswith("conv-backward")


def test_report_is_json_serialisable(build):
    model = build(CONV_BN, w=[4, 3, 3, 3], b=[4], **STATS)
    _, report = fold(model)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["bn_before"] == 1 and data["bn_after"] == 0 and data["residual_ops"] == 0
    assert data["bns"] == [
        {
            "name": "BatchNormalization_1",
            "kind": "BatchNormalization",
            "status": "folded",
            "folded_into": ["Conv_0"],
            "rules": ["conv-backward:Conv_0"],
            "residual": [],
            "reasons": [],
        }
    ]


def test_count_bn_counts_nodes_and_chains(build):
    model = build(
        """
        g (float[N, 3, 4, 4] x) => (float[N, 3, 4, 4] z) {
            y = BatchNormalization (x, gamma, beta, mean, var)
            m = Mul (y, g2)
            z = Add (m, b2)
        }""",
        gamma=[3],
        beta=[3],
        mean=[3],
        var=[3],
        g2=[3, 1, 1],
        b2=[3, 1, 1],
    )
    assert count_bn(model) == 2


def test_opset13_model_folds(check, tools):
    model = onnx.parser.parse_model(
        tools.header.replace('"" : 17', '"" : 13')
        + """
        g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z) {
            y = Conv (x, w)
            z = BatchNormalization (y, gamma, beta, mean, var)
        }"""
    )
    rng = np.random.default_rng(0)
    for name, shape in {"w": (4, 3, 3, 3), **{k: (4,) for k in STATS}}.items():
        value = rng.uniform(0.5, 1.5, shape) if name == "var" else rng.normal(size=shape)
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    _, _, ops = check(model)
    assert ops == {"Conv": 1}


def test_value_read_by_a_subgraph_is_not_rewritten(build, tools):
    model = build(
        """
        g (float[N, 3, 6, 6] x, bool cond) => (float[N, 4, 4, 4] z, float[N, 4, 4, 4] o) {
            y = Conv (x, w, b)
            z = BatchNormalization (y, gamma, beta, mean, var)
            o = If (cond) <
                then_branch = t () => (float[N, 4, 4, 4] a) { a = Identity (y) },
                else_branch = e () => (float[N, 4, 4, 4] c) { c = Neg (y) }
            >
        }""",
        w=[4, 3, 3, 3],
        b=[4],
        **STATS,
    )
    folded, _ = fold(model)
    assert sum(n.op_type == "BatchNormalization" for n in folded.graph.node) == 1
    feeds = tools.random_feeds(model)
    feeds["cond"] = np.array(True)
    for e, a in zip(tools.run(model, feeds), tools.run(folded, feeds), strict=True):
        assert compare(e, a, min_top1=0.0).passed


def test_unnamed_nodes_get_names(build):
    model = build(CONV_BN, w=[4, 3, 3, 3], b=[4], **STATS)
    for n in model.graph.node:
        n.name = ""
    _, report = fold(model)
    assert report.bns[0].name == "BatchNormalization_1" and report.bns[0].status == "folded"


class _CountDown:
    name = "count-down"

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, g: Graph) -> bool:
        self.n -= 1
        return self.n >= 0


def test_pass_manager_runs_to_a_fixed_point(build):
    g = Graph(build(CONV_BN, w=[4, 3, 3, 3], b=[4], **STATS))
    assert PassManager([_CountDown(2)]).run(g) == 3
    with pytest.raises(RuntimeError, match="fixed point"):
        PassManager([_CountDown(10)], max_rounds=4).run(g)


def test_model_without_bn_is_unchanged(build, tools):
    model = build(
        """
        g (float[N, 3, 6, 6] x) => (float[N, 4, 4, 4] z) {
            y = Conv (x, w, b)
            z = Relu (y)
        }""",
        w=[4, 3, 3, 3],
        b=[4],
    )
    folded, report = fold(model)
    assert report.bn_before == report.bn_after == 0 and report.bns == []
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu"]
    assert [n.input for n in folded.graph.node] == [n.input for n in model.graph.node]


def test_refused_bn_is_listed_as_its_own_residual(build):
    model = build(
        """
        g (float[N, 3, 4, 4] y, float[3] mean) => (float[N, 3, 4, 4] z) {
            z = BatchNormalization (y, gamma, beta, mean, var)
        }""",
        gamma=[3],
        beta=[3],
        var=[3],
    )
    _, report = fold(model)
    outcome = report.bns[0]
    assert outcome.status == "kept" and outcome.residual == [
        "BatchNormalization 'BatchNormalization_0'"
    ]
    assert report.residual_ops == 1 and report.bn_after == 1


def test_one_summary_of_the_report_leaves_an_input_normalisation_out():
    stored = {
        "residual_ops": 3,
        "bns": [
            {"name": "input_normalization", "status": "partial", "residual": ["Mul 'a'"]},
            {"name": "bn1", "status": "folded", "residual": []},
            {"name": "bn2", "status": "partial", "residual": ["Mul 'b'"]},
            {"name": "bn3", "status": "kept", "residual": ["BatchNormalization 'bn3'"]},
        ],
    }
    summary = FoldSummary.of(stored)
    assert summary == FoldSummary(bns=3, folded=1, partial=1, kept=1, ops_left=2)
    assert summary.describe() == "3 BNs: 1 folded, 1 partial, 1 kept; 2 ops left by BNs"
    assert FoldSummary.of({}).describe() == "no BN found; nothing to fold"


def test_the_summary_counts_what_the_fold_left(build):
    model = build(CONV_BN, w=[4, 3, 3, 3], b=[4], **STATS)
    _, report = fold(model)
    assert report.summary() == FoldSummary(bns=1, folded=1, partial=0, kept=0, ops_left=0)
    assert report.summary() == FoldSummary.of(json.loads(report.to_json()))
