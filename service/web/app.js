// bnfold's web page: the repository, and per served version its fold report
// (drawn), parity, BN health, training and a try-it panel. Plain DOM, no
// library; every request goes to this server (relative URLs). Text from the
// repository is untrusted: it only ever reaches the page as text nodes.
"use strict";

const TOKEN_KEY = "bnfold.token";
const SVG_NS = "http://www.w3.org/2000/svg";
const state = { summary: null, reasons: null, meta: new Map(), tokenRequired: false };

// ------------------------------------------------------------------ helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(node, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

function modelPath(name, version) {
  return `v2/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}`;
}

// Numbers as a person reads them; the raw value stays in data-value.
function num(x) {
  if (typeof x !== "number" || !Number.isFinite(x)) return x === undefined ? "–" : String(x);
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a < 1e-3 || a >= 1e5) return x.toExponential(2).replace("e-", "e−");
  if (Number.isInteger(x)) return String(x);
  return String(Number(x.toPrecision(4)));
}

function pct(x) {
  return typeof x === "number" ? `${(100 * x).toFixed(x === 1 ? 0 : 2)}%` : "–";
}

function cell(value, format = num, cls = "") {
  const attrs = { class: `n ${cls}`.trim(), text: format(value) };
  if (typeof value === "number") attrs["data-value"] = String(value);
  return el("td", attrs);
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind}`, text });
}

function stateKind(s) {
  return s === "READY" ? "ok" : s === "LOADING" ? "warn" : "bad";
}

function device(meta) {
  if (!meta) return "";
  const p = meta.parameters || {};
  const provider = String(p.provider || "").replace("ExecutionProvider", "");
  return p.device_id >= 0 ? `${provider} (GPU ${p.device_id})` : provider;
}

function card(title, id, ...children) {
  return el("section", { class: "card", id }, el("h2", { text: title }), ...children);
}

// Lines of at most ``width`` characters, broken between words. A word longer
// than a line (a node name) breaks only after one of _ . / : - inside it, and
// is cut elsewhere only where a piece between those is itself too long.
function wrap(text, width) {
  const tokens = [];
  for (const word of String(text).split(/\s+/).filter(Boolean)) {
    splitWord(word, width).forEach((piece, i) => tokens.push({ piece, glue: i ? "" : " " }));
  }
  const lines = [];
  let line = "";
  for (const { piece, glue } of tokens) {
    if (line && (line + glue + piece).length > width) {
      lines.push(line);
      line = piece;
    } else line = line ? line + glue + piece : piece;
  }
  if (line) lines.push(line);
  return lines;
}

function splitWord(word, width) {
  if (word.length <= width) return [word];
  const chunks = [];
  let chunk = "";
  for (const part of word.split(/(?<=[_./:-])/)) {
    if (chunk && (chunk + part).length > width) {
      chunks.push(chunk);
      chunk = "";
    }
    chunk += part;
    while (chunk.length > width) {
      chunks.push(chunk.slice(0, width));
      chunk = chunk.slice(width);
    }
  }
  if (chunk) chunks.push(chunk);
  return chunks;
}

function short(text, n) {
  text = String(text);
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

// ``name`` in at most ``n`` characters, keeping the part that tells it from
// ``others`` (exporters name every BN alike but for a suffix or a middle
// part): the window starts where the name parts from its nearest neighbour.
function shortName(name, n, others) {
  if (name.length <= n) return name;
  if (n < 3) return "…";
  let prefix = 0;
  for (const o of others) {
    if (o === name) continue;
    let k = 0;
    while (k < name.length && k < o.length && name[k] === o[k]) k++;
    prefix = Math.max(prefix, k);
  }
  const tail = name.length - (n - 1); // where a window at the end starts
  if (prefix <= n - 2) return short(name, n);
  if (tail <= prefix) return `…${name.slice(tail)}`;
  const start = Math.max(1, prefix - 2);
  return `…${name.slice(start, start + n - 2)}…`;
}

// ------------------------------------------------------------------ repository

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function loadServer() {
  const target = document.getElementById("server");
  try {
    const meta = await api("v2");
    const p = meta.parameters || {};
    clear(target).append(
      `${meta.name} ${meta.version} · ${String(p.provider || "").replace(/ExecutionProvider/g, "")}` +
        ` · ${p.models_ready} ready`,
    );
  } catch (e) {
    clear(target).append(`server: ${e.message}`);
  }
}

async function loadRepository() {
  const summary = await api("web/api/models");
  state.summary = summary.models;
  state.tokenRequired = summary.token_required;
  state.reasons = null;
  const form = document.getElementById("token-form");
  const note = document.getElementById("token-note");
  if (!summary.token_required || token()) {
    const headers = { "Content-Type": "application/json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    try {
      const index = await api("v2/repository/index", { method: "POST", headers, body: "{}" });
      state.reasons = new Map(index.map((e) => [`${e.name}/${e.version || ""}`, e.reason || ""]));
      note.textContent = summary.token_required ? "Token accepted for this tab." : "";
    } catch (e) {
      note.textContent = e.status === 401 ? "That token was refused." : `Index: ${e.message}`;
    }
  } else {
    note.textContent = "The reasons need the token the server was started with.";
  }
  form.hidden = !summary.token_required;
  await Promise.all(
    state.summary
      .filter((e) => e.state === "READY")
      .map(async (e) => {
        try {
          state.meta.set(`${e.name}/${e.version}`, await api(modelPath(e.name, e.version)));
        } catch {
          state.meta.delete(`${e.name}/${e.version}`);
        }
      }),
  );
  renderRepository();
}

function grouped() {
  const models = new Map();
  for (const e of state.summary || []) {
    if (!models.has(e.name)) models.set(e.name, []);
    models.get(e.name).push(e);
  }
  return models;
}

function renderRepository() {
  const list = clear(document.getElementById("models"));
  const models = grouped();
  document.getElementById("model-count").textContent = `${models.size} model${models.size === 1 ? "" : "s"}`;
  if (!models.size) list.append(el("li", { class: "muted", text: "The repository is empty." }));
  const [current, currentVersion] = route();
  for (const [name, entries] of models) {
    const versions = el("ul", { class: "versions" });
    for (const e of entries) {
      const key = `${name}/${e.version || ""}`;
      const meta = state.meta.get(key);
      const reason = state.reasons ? state.reasons.get(key) : undefined;
      const label = e.version ? `v${e.version}` : "no version";
      const head =
        e.state === "READY"
          ? el("a", { href: `#/m/${encodeURIComponent(name)}/${encodeURIComponent(e.version)}`, text: label })
          : el("span", { text: label });
      const selected = name === current && e.version === currentVersion;
      versions.append(
        el(
          "li",
          { class: selected ? "selected" : "", "data-version": e.version || "", "data-state": e.state },
          head,
          badge(e.state, stateKind(e.state)),
          meta ? el("span", { class: "device", text: device(meta) }) : null,
          reason ? el("p", { class: e.state === "READY" ? "reason muted" : "reason", text: reason }) : null,
          e.state !== "READY" && reason === undefined && state.tokenRequired
            ? el("p", { class: "reason muted", text: "reason: needs the API token" })
            : null,
        ),
      );
    }
    list.append(el("li", { class: "model", "data-model": name }, el("strong", { text: name }), versions));
  }
}

// ------------------------------------------------------------------ routing

function route() {
  const m = location.hash.match(/^#\/m\/([^/]+)\/([^/]+)$/);
  return m ? [decodeURIComponent(m[1]), decodeURIComponent(m[2])] : [null, null];
}

async function show() {
  const main = document.getElementById("main");
  let [name, version] = route();
  if (!name) {
    const first = (state.summary || []).find((e) => e.state === "READY");
    if (!first) {
      clear(main).append(
        el("h1", { text: "No model is serving" }),
        el("p", { class: "muted", text: "The repository list says why (with the API token when one is set)." }),
      );
      return;
    }
    history.replaceState(null, "", `#/m/${encodeURIComponent(first.name)}/${encodeURIComponent(first.version)}`);
    [name, version] = [first.name, first.version];
  }
  renderRepository();
  clear(main).append(el("p", { class: "muted", text: `Loading ${name} v${version}…` }));
  try {
    const base = modelPath(name, version);
    const [meta, parity, details] = await Promise.all([
      api(base),
      api(`${base}/parity`),
      api(`web/api/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}`),
    ]);
    if (route()[0] !== name || route()[1] !== version) return; // moved on meanwhile
    renderModel(main, { name, version, meta, parity, details });
  } catch (e) {
    clear(main).append(el("h1", { text: `${name} v${version}` }), el("p", { class: "error", text: e.message }));
  }
}

// ------------------------------------------------------------------ a model version

function renderModel(main, m) {
  const p = m.meta.parameters || {};
  const versions = (state.summary || []).filter((e) => e.name === m.name && e.state === "READY");
  const head = el(
    "div",
    { class: "title" },
    el("h1", { id: "model-title", text: m.name }),
    el(
      "div",
      { class: "tabs", role: "tablist" },
      versions.map((e) =>
        el("a", {
          href: `#/m/${encodeURIComponent(m.name)}/${encodeURIComponent(e.version)}`,
          class: e.version === m.version ? "tab on" : "tab",
          text: `v${e.version}`,
        }),
      ),
    ),
    el(
      "p",
      { class: "facts" },
      badge("READY", "ok"),
      el("span", { text: device(m.meta) }),
      el("span", { text: p.dynamic_batching ? `batches up to ${p.max_batch_size}` : "no batching" }),
      el("span", { text: `config: ${p.config_source || "?"}` }),
      signature(m.meta),
    ),
  );
  clear(main).append(
    head,
    el(
      "div",
      { class: "grid" },
      el("div", { class: "col" }, foldCard(m), parityCard(m)),
      el("div", { class: "col" }, tryCard(m), sourceCard(m), healthCard(m), trainingCard(m)),
    ),
  );
  fitNames(main);
}

function signature(meta) {
  const t = (s) => `${s.name} ${s.datatype}[${s.shape.join(", ")}]`;
  return el("span", { class: "mono", text: `${meta.inputs.map(t).join(", ")} → ${meta.outputs.map(t).join(", ")}` });
}

// ------------------------------------------------------------------ the fold picture

// The fold: the manifest's (or, without one, what fold on load served) and
// fold on load's, with the fold report's one summary (BNs folded, partial,
// kept; ops left by BNs), the numbers `bnfold fold`, import and /parity give.
function foldFacts(m) {
  const folding = m.parity.folding || {};
  const onLoad = m.parity.fold_on_load;
  const has = (r) => r && r.report && r.report.bns;
  const source = has(folding) ? folding : has(onLoad) ? onLoad : null;
  const report = source ? source.report : null;
  const summary = (source && source.summary) || folding.summary || (onLoad && onLoad.summary) || null;
  const before = folding.bn_before ?? (onLoad ? onLoad.bn_before : report ? report.bn_before : undefined);
  const after = folding.bn_after ?? (onLoad ? onLoad.bn_after : report ? report.bn_after : undefined);
  return { report, summary, before, after, onLoad };
}

// '6 BNs: 5 folded, 1 partial, 0 kept; 1 op left by BNs', as FoldSummary.describe says it
function describeFold(s) {
  if (!s.bns) return "No BN found; nothing to fold.";
  const plural = (k, one, many) => `${k} ${k === 1 ? one : many}`;
  return `${plural(s.bns, "BN", "BNs")}: ${s.folded} folded, ${s.partial} partial, ${s.kept} kept; ` +
    `${plural(s.ops_left, "op", "ops")} left by BNs`;
}

function foldCard(m) {
  const { report, summary, before, after, onLoad } = foldFacts(m);
  const bare = m.details.kind === "bare";
  const graphs = m.details.graphs || {};
  const reference = graphs.reference && graphs.reference.layers ? graphs.reference : null;
  const served = graphs.served && graphs.served.layers ? graphs.served : null;
  const stats = el(
    "dl",
    { class: "stats" },
    after !== undefined
      ? stat("BN layers", before, after, "bn-count")
      : served // nothing folded: the BNs the served graph holds
        ? stat("BN layers", undefined, served.layers.filter((l) => l.op === "BatchNormalization").length, "bn-count")
        : null,
    reference && served ? stat("layers", reference.layers.length, served.layers.length, "layer-count") : null,
    summary ? stat("ops left by BNs", undefined, summary.ops_left, "ops-left") : null,
  );
  const body = [stats];
  if (summary) body.push(el("p", { id: "fold-summary", class: "small", text: describeFold(summary) }));
  if (onLoad) {
    body.push(
      el("p", {
        class: onLoad.served === "folded" ? "note ok" : "note warn",
        id: "fold-on-load",
        text: `Folded when the server loaded it: serving the ${onLoad.served} graph` +
          (onLoad.reason ? ` (${onLoad.reason})` : "") + ".",
      }),
    );
  }
  if (bare) {
    body.push(
      el("p", {
        class: "muted",
        id: "no-manifest",
        text: report
          ? "This version has no manifest.json: the fold report is the server's, from folding it on load."
          : "This version has no manifest.json: a model.onnx served as it is, with no fold report." +
            (onLoad ? "" : " Fold on load (the fold_on_load parameter, or --fold-on-load) folds it when it loads."),
      }),
    );
  } else if (!report) {
    body.push(el("p", { class: "muted", id: "no-fold-report", text: "This version's manifest has no fold report." }));
  }
  if (report) body.push(legend(), foldPicture(report, reference || served));
  const source = reference ? `Layers of ${reference.file}, in graph order` : served ? `Layers of ${served.file}` : "";
  if (source && report) body.push(el("p", { class: "muted small", text: `${source}; shape arithmetic left out.` }));
  return card("Folding", "fold", ...body);
}

function stat(label, before, after, id) {
  const value = before === undefined
    ? el("dd", {}, el("b", { "data-value": after, text: num(after) }))
    : el(
        "dd",
        {},
        el("span", { class: "before", "data-value": before, text: num(before) }),
        " → ",
        el("b", { class: "after", "data-value": after, text: num(after) }),
      );
  return el("div", { class: "stat", id }, el("dt", { text: label }), value);
}

function legend() {
  const item = (cls, text) => el("span", { class: "key" }, el("i", { class: `swatch ${cls}` }), text);
  return el(
    "p",
    { class: "legend" },
    item("folded", "BN folded away"),
    item("partial", "partly folded, ops left"),
    item("kept", "kept"),
    item("target", "layer that absorbed a BN"),
  );
}

const ROW = 30;
const GAP = 6;
const LINE = 15;
const BOX_X = 8;
// The picture is drawn at the width it will have (1 unit = 1 CSS pixel), so
// its text stays readable on a phone: set by sizePicture() before drawing.
let BOX_W = 400;
let WIDTH = 640;
let CHARS = 64;

function sizePicture() {
  const main = document.getElementById("main").clientWidth;
  const column = window.innerWidth >= 1200 ? ((main - 16) * 1.45) / 2.45 : main;
  WIDTH = Math.round(Math.max(300, Math.min(640, column - 40)));
  BOX_W = Math.round(Math.min(400, WIDTH * 0.64));
  CHARS = Math.floor((BOX_W - 40) / noteCharWidth());
}

// The width of a character of the notes under a BN (.why: 11.5px system-ui),
// measured on text like theirs, so that their lines fit the box.
function noteCharWidth() {
  const sample = "why: backward: Conv 'node_conv2d' pads with zeros (pads=[1, 1, 1, 1]): MaxPool";
  const ctx = document.createElement("canvas").getContext("2d");
  ctx.font = "11.5px system-ui, sans-serif";
  const width = ctx.measureText(sample).width / sample.length;
  return Number.isFinite(width) && width > 0 ? width * 1.08 : 6.5;
}

function foldPicture(report, graph) {
  sizePicture();
  const bns = report.bns || [];
  const layers = graph ? graph.layers : [];
  const index = new Map(layers.map((l, i) => [l.name, i]));
  const rows = layers.map((l) => ({ ...l, bn: null, absorbed: [] }));
  const loose = []; // BNs the layer list does not show (no graph, or renamed nodes)
  for (const bn of bns) {
    const at = bn.name.split("+").map((n) => index.get(n)).filter((i) => i !== undefined);
    if (!at.length) {
      loose.push(bn);
      continue;
    }
    for (const i of at) rows[i].bn = bn;
    rows[Math.max(...at)].head = true; // a BN made of several nodes speaks once, at its last
    for (const target of bn.folded_into || []) {
      const t = index.get(target);
      if (t !== undefined) rows[t].absorbed.push(bn);
    }
  }
  for (const bn of loose) rows.push({ name: bn.name, op: bn.kind, bn, absorbed: [], loose: true, head: true });

  // vertical layout: a BN that stays carries its leftovers and reasons under it
  let y = 8;
  for (const r of rows) {
    r.extra = [];
    if (r.bn && r.bn.status !== "folded" && (r.head || r.loose)) {
      for (const res of r.bn.residual || []) r.extra.push(...wrap(`left: ${res}`, CHARS));
      for (const why of r.bn.reasons || []) r.extra.push(...wrap(`why: ${why}`, CHARS));
    } else if (r.bn && r.loose && (r.bn.folded_into || []).length) {
      r.extra.push(...wrap(`folded into ${r.bn.folded_into.join(", ")}`, CHARS));
    }
    r.y = y;
    r.h = ROW + r.extra.length * LINE + (r.extra.length ? 6 : 0);
    y += r.h + GAP;
  }
  const height = y + 4;
  const picture = svg("svg", {
    class: "foldsvg",
    viewBox: `0 0 ${WIDTH} ${height}`,
    width: WIDTH,
    height,
    role: "img",
    "aria-label": `Fold picture: ${bns.length} BatchNorm layers`,
  });
  const defs = svg("defs", {});
  for (const s of ["folded", "partial", "kept"]) {
    defs.append(
      svg(
        "marker",
        { id: `arrow-${s}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        svg("path", { d: "M0,0 L10,5 L0,10 z", class: `arrowhead ${s}` }),
      ),
    );
  }
  picture.append(defs);

  // the spine: data flows down through the layers
  if (rows.length > 1) {
    picture.append(
      svg("line", { x1: BOX_X + 18, y1: rows[0].y + ROW / 2, x2: BOX_X + 18, y2: rows[rows.length - 1].y, class: "spine" }),
    );
  }
  const arcs = svg("g", { class: "arcs" });
  for (const r of rows) picture.append(layerBox(r));
  // arcs: from each BN to the layers that absorbed it, farther ones wider
  rows.forEach((r, i) => {
    if (!r.bn || r.loose || !r.head) return;
    for (const target of r.bn.folded_into || []) {
      const t = index.get(target);
      if (t === undefined || t === i) continue;
      const a = rows[i];
      const b = rows[t];
      const x = BOX_X + BOX_W;
      const y1 = a.y + ROW / 2;
      const y2 = b.y + ROW / 2;
      const bulge = Math.min(WIDTH - x - 24, 36 + 14 * Math.abs(t - i));
      arcs.append(
        svg(
          "path",
          {
            d: `M${x},${y1} C${x + bulge},${y1} ${x + bulge},${y2} ${x + 2},${y2}`,
            class: `arc ${r.bn.status}`,
            "marker-end": `url(#arrow-${r.bn.status})`,
            "data-from": r.bn.name,
            "data-to": target,
          },
          svg("title", { text: `${r.bn.name} → ${target}: ${(r.bn.rules || []).join(", ")}` }),
        ),
      );
      const direction = t > i ? "forward" : "backward";
      const mid = (y1 + y2) / 2;
      arcs.append(
        svg("text", { x: x + bulge + 4, y: mid + 4, class: `arclabel ${r.bn.status}`, text: direction }),
      );
    }
  });
  picture.append(arcs);
  if (graph && graph.truncated) {
    picture.append(svg("text", { x: BOX_X, y: height - 2, class: "muted", text: "(graph cut for the page)" }));
  }
  return el("div", { class: "picture" }, picture);
}

function layerBox(r) {
  const g = svg("g", {
    class: r.bn ? `layer bn ${r.bn.status}` : r.absorbed.length ? "layer target" : "layer",
    "data-name": r.name,
    "data-op": r.op,
    "data-status": r.bn ? r.bn.status : undefined,
    transform: `translate(${BOX_X},${r.y})`,
  });
  g.append(svg("rect", { x: 0, y: 0, width: BOX_W, height: r.h, rx: 6, class: "box" }));
  if (r.absorbed.length) g.append(svg("rect", { x: 0, y: 0, width: 5, height: r.h, rx: 2, class: "stripe" }));
  g.append(svg("circle", { cx: 18, cy: ROW / 2, r: 4, class: "dot" }));
  g.append(svg("text", { x: 30, y: ROW / 2 + 4.5, class: "op", text: r.op }));
  g.append(svg("text", { x: 30, y: ROW / 2 + 4.5, class: "name", text: r.name }));
  let tag = "";
  if (r.bn) tag = r.bn.status;
  else if (r.absorbed.length) tag = `+${r.absorbed.length} BN`;
  if (tag) g.append(svg("text", { x: BOX_W - 10, y: ROW / 2 + 4.5, class: "tag", "text-anchor": "end", text: tag }));
  r.extra.forEach((line, k) => {
    g.append(svg("text", { x: 30, y: ROW + 4 + k * LINE, class: "why", text: line }));
  });
  const title = r.bn
    ? `${r.bn.name} (${r.bn.kind}): ${r.bn.status}` +
      ((r.bn.folded_into || []).length ? `, into ${r.bn.folded_into.join(", ")}` : "") +
      ((r.bn.rules || []).length ? `\nsteps: ${r.bn.rules.join(", ")}` : "")
    : r.absorbed.length
      ? `${r.name} absorbed ${r.absorbed.map((b) => b.name).join(", ")}`
      : r.name;
  g.append(svg("title", { text: title }));
  return g;
}

// Once the picture is in the page: each name after its op, shortened to fit
// the box so that it stays told apart from the others (the full name is in
// the box's title, shown on hover).
function fitNames(root) {
  const groups = [...root.querySelectorAll(".foldsvg .layer")];
  const names = groups.map((g) => g.dataset.name);
  for (const g of groups) {
    const op = g.querySelector(".op");
    const name = g.querySelector(".name");
    const tag = g.querySelector(".tag");
    const x = 30 + op.getComputedTextLength() + 8;
    const room = (tag ? BOX_W - 16 - tag.getComputedTextLength() : BOX_W - 10) - x - 6;
    name.setAttribute("x", x);
    const full = name.textContent;
    let n = full.length;
    while (n > 4 && name.getComputedTextLength() > room) name.textContent = shortName(full, --n, names);
    if (name.getComputedTextLength() > room) name.textContent = "";
  }
}

// ------------------------------------------------------------------ parity

function parityRow(label, r, cls = "", key = "") {
  return el(
    "tr",
    { class: cls, "data-key": key || undefined },
    el("th", { scope: "row", text: label }),
    cell(r.n_samples),
    cell(r.max_abs_error, num, "abs"),
    cell(r.max_rel_error, num, "rel"),
    cell(r.top1_agreement, pct, "top1"),
    el("td", {}, r.passed === undefined ? "–" : badge(r.passed ? "pass" : "fail", r.passed ? "ok" : "bad")),
  );
}

// The stored rows come labelled from the page's data route (every writer's
// layout: convert, import, convert_module, quantize, fold on load); rows
// measured here (Recompute) are added below them as class "now".
function parityCard(m) {
  const stored = m.details.parity || { rows: [], notes: [] };
  const table = el(
    "table",
    { class: "parity", id: "parity-table" },
    el(
      "thead",
      {},
      el("tr", {}, ["compared", "n", "max abs", "max rel", "top-1", ""].map((t) => el("th", { text: t }))),
    ),
  );
  const body = el("tbody", {});
  for (const r of stored.rows) {
    const label = r.output !== undefined ? `${r.label} · ${r.output}` : r.label;
    body.append(parityRow(label, r, "stored", r.key));
  }
  if (!body.children.length) {
    const why = m.details.kind === "bare" ? "No stored parity report: this version has no manifest.json." : "No stored parity report.";
    body.append(el("tr", { class: "none" }, el("td", { colspan: 6, class: "muted", text: why })));
  }
  const live = m.parity.live; // --shadow-parity: sampled live requests vs the reference
  if (live) {
    const dropped = Object.values(live.dropped || {}).reduce((a, b) => a + b, 0);
    const label = `live traffic: ${live.requests} requests (${pct(live.rate)} sampled, ${dropped} dropped)`;
    body.append(parityRow(label, live, "live", "live")); // its badge: fail while below its gate
  }
  table.append(body);
  const notes = [...stored.notes];
  const runtime = (m.parity.versions || {}).onnxruntime;
  if (runtime) notes.push(`measured when the version was written, with ONNX Runtime ${runtime}`);
  const provider = (m.meta.parameters || {}).provider || "the serving device";
  const status = el("p", { class: "muted small", id: "parity-status" });
  const button = el("button", { type: "button", id: "recompute", text: `Recompute on ${provider.replace("ExecutionProvider", "")}` });
  const hasReference = m.parity.reference !== "none";
  button.disabled = !hasReference;
  if (!hasReference) status.textContent = "No reference.onnx is stored: nothing to compare with.";
  button.addEventListener("click", async () => {
    button.disabled = true;
    status.textContent = "Running reference.onnx and model.onnx on 256 inputs…";
    try {
      const r = await api(`${modelPath(m.name, m.version)}/parity`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ n: 256 }),
      });
      for (const old of body.querySelectorAll("tr.now, tr.none")) old.remove();
      body.append(parityRow(`now, on ${r.provider.replace("ExecutionProvider", "")}`, r, "now"));
      status.textContent = `Reference on ${r.reference_provider}, folded on ${r.provider}, ${r.n_samples} random inputs.`;
    } catch (e) {
      status.textContent = `Recompute failed: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  });
  return card(
    "Parity",
    "parity",
    el("div", { class: "scroll" }, table),
    notes.length ? el("p", { class: "muted small", text: notes.join("; ") + "." }) : null,
    el("div", { class: "row" }, button),
    status,
  );
}

// ------------------------------------------------------------------ BN health

function healthCard(m) {
  const health = (m.parity.folding || {}).bn_health;
  if (!health) {
    const why = m.details.kind === "bare"
      ? "No BN health check: this version has no manifest.json."
      : "No BN health check in this manifest (the converter writes one when it trains the network).";
    return card("BN health", "health", el("p", { class: "muted", text: why }));
  }
  const t = health.thresholds || {};
  const [lo, hi] = t.var_ratio_range || [0, Infinity];
  // PyTorch module names ("1", "4" in a Sequential): each BN by its place, the name beside
  const rows = (health.layers || []).map((l, i) =>
    el(
      "tr",
      { "data-module": l.name },
      el(
        "th",
        { scope: "row", class: "bnname", title: `PyTorch module ${JSON.stringify(String(l.name))}` },
        el("span", { text: `BN ${i + 1}` }),
        " ",
        el("span", { class: "mono muted", text: `module ${l.name}` }),
      ),
      cell(l.mean_shift, num, l.mean_shift > (t.max_mean_shift ?? Infinity) ? "bad" : ""),
      cell(l.var_ratio_min, num, l.var_ratio_min < lo ? "bad" : ""),
      cell(l.var_ratio_max, num, l.var_ratio_max > hi ? "bad" : ""),
      cell(l.dead_channels, num, l.dead_channels > 0 ? "bad" : ""),
      el("td", {}, l.never_updated ? badge("never updated", "bad") : null),
    ),
  );
  const gap = health.eval_vs_batch_stats || {};
  return card(
    "BN health",
    "health",
    el(
      "p",
      {},
      badge(health.healthy ? "healthy" : "check", health.healthy ? "ok" : "warn"),
      ` ${health.n_bn} BN layers, running statistics against batch statistics on ${health.n_samples} samples`,
      gap.max_rel_error !== undefined ? `: outputs differ by ${num(gap.max_rel_error)} (relative), top-1 agreement ${pct(gap.top1_agreement)}.` : ".",
    ),
    (health.warnings || []).length ? el("ul", { class: "warnings" }, health.warnings.map((w) => el("li", { text: bnWarning(w, health.layers || []) }))) : null,
    rows.length
      ? el(
          "div",
          { class: "scroll" },
          el(
            "table",
            { class: "health" },
            el("thead", {}, el("tr", {}, ["BN layer", "mean shift", "var min", "var max", "dead", ""].map((x) => el("th", { text: x })))),
            el("tbody", {}, rows),
          ),
        )
      : null,
  );
}

// The converter's warnings start with the module's name ("4: input var ..."):
// said with the BN's place, as the table names it.
function bnWarning(text, layers) {
  const i = layers.findIndex((l) => String(text).startsWith(`${l.name}: `));
  return i < 0 ? text : `BN ${i + 1} (module ${layers[i].name})${String(text).slice(String(layers[i].name).length)}`;
}

// ------------------------------------------------------------------ training

const METRIC_NAMES = {
  test_accuracy: "test accuracy",
  val_accuracy: "validation accuracy",
  train_accuracy: "training accuracy",
  test_loss: "test loss",
  train_seconds: "training time (s)",
};

// Only a version that was trained here (bnfold convert) has this card.
function trained(m) {
  const man = m.details.manifest || {};
  return Boolean(man.training || m.details.curves);
}

function trainingCard(m) {
  if (!trained(m)) return null;
  const man = m.details.manifest || {};
  const metrics = man.metrics || {};
  const facts = [];
  for (const [k, v] of Object.entries(metrics)) {
    if (typeof v !== "number") continue;
    facts.push([METRIC_NAMES[k] || k.replace(/_/g, " "), k.includes("accuracy") ? pct(v) : num(v)]);
  }
  const tr = man.training || {};
  if (tr.epochs !== undefined) facts.push(["epochs · batch · lr", `${tr.epochs} · ${tr.batch_size} · ${num(tr.lr)}`]);
  const data = man.data || {};
  if (data.name) facts.push(["data", `${data.name}: ${data.n_train} train, ${data.n_val} val, ${data.n_test} test`]);
  const arch = man.arch || {};
  if (arch.name) facts.push(["architecture", `${arch.name}, input [${(arch.input_shape || []).join(", ")}]`]);
  const curves = m.details.curves;
  const charts = curves
    ? el(
        "div",
        { class: "charts", id: "curves" },
        chart("loss", curves, ["train_loss", "val_loss"]),
        chart("accuracy", curves, ["train_accuracy", "val_accuracy"]),
      )
    : el("p", {
        class: "muted",
        id: "no-curves",
        text: "No training curves in this version: bnfold keeps the per-epoch curves in the training run's folder (metrics.json, curves.png), not in the repository.",
      });
  return card("Training", "training", facts.length ? factList(facts) : null, charts);
}

function factList(facts) {
  return el("dl", { class: "facts-list" }, facts.map(([k, val]) => el("div", {}, el("dt", { text: k }), el("dd", { text: val }))));
}

// Where the version came from, for every kind (service/page_data.py's kinds).
function sourceCard(m) {
  const man = m.details.manifest || {};
  const src = man.source || {};
  const made = [src.producer, src.opset !== undefined ? `opset ${src.opset}` : null].filter(Boolean).join(", ");
  const said = {
    converted: "Trained and converted by bnfold convert: exported with every BN kept (reference.onnx), folded into model.onnx, and proven against the PyTorch network.",
    imported: `Imported by bnfold import from ${src.file || "an ONNX file"}${made ? ` (${made})` : ""}: the file is reference.onnx, folded into model.onnx and proven against it.`,
    module: `Converted from the PyTorch module ${src.module || ""} by bnfold.convert_module: exported with every BN kept (reference.onnx), folded into model.onnx, and proven against the module.`,
    bnfold: "Written with a manifest.json that does not say where the version came from.",
    bare: "This version has no manifest.json: a model.onnx served as it is (as in a Triton repository). Nothing records where it came from, and its files are not checked against a sha256.",
  }[m.details.kind] || "";
  const facts = [];
  if (src.normalize) facts.push(["input normalisation", `mean ${JSON.stringify(src.normalize.mean)}, std ${JSON.stringify(src.normalize.std)}, in front of the graph`]);
  if (m.details.precision) facts.push(["precision", `${m.details.precision}, gated against the float32 graph`]);
  for (const [k, said] of Object.entries(m.details.quantization || {})) facts.push([k, said]); // calibration, gate
  if (man.created) facts.push(["written", man.created]);
  const v = man.versions || {};
  const tools = ["bnfold", "torch", "onnx", "onnxruntime"].filter((k) => v[k]).map((k) => `${k} ${v[k]}`);
  if (tools.length) facts.push(["with", tools.join(", ")]);
  return card(
    "Source",
    "source",
    el("p", { id: "source-kind", "data-kind": m.details.kind, text: said }),
    facts.length ? factList(facts) : null,
  );
}

function chart(title, rows, keys) {
  const W = 260;
  const H = 150;
  const P = { l: 38, r: 8, t: 22, b: 22 };
  const xs = rows.map((r, i) => (typeof r.epoch === "number" ? r.epoch : i + 1));
  const series = keys.filter((k) => rows.some((r) => typeof r[k] === "number"));
  const values = series.flatMap((k) => rows.map((r) => r[k]).filter((x) => typeof x === "number"));
  if (!values.length) return null;
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (hi === lo) [lo, hi] = [lo - 0.5, hi + 0.5];
  const x0 = Math.min(...xs);
  const x1 = Math.max(...xs) === x0 ? x0 + 1 : Math.max(...xs);
  const sx = (x) => P.l + ((x - x0) / (x1 - x0)) * (W - P.l - P.r);
  const sy = (y) => H - P.b - ((y - lo) / (hi - lo)) * (H - P.t - P.b);
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title });
  g.append(svg("text", { x: P.l, y: 12, class: "charttitle", text: title }));
  g.append(svg("line", { x1: P.l, y1: H - P.b, x2: W - P.r, y2: H - P.b, class: "axis" }));
  g.append(svg("line", { x1: P.l, y1: P.t, x2: P.l, y2: H - P.b, class: "axis" }));
  g.append(svg("text", { x: P.l - 4, y: sy(hi) + 4, class: "tick", "text-anchor": "end", text: num(hi) }));
  g.append(svg("text", { x: P.l - 4, y: sy(lo) + 4, class: "tick", "text-anchor": "end", text: num(lo) }));
  g.append(svg("text", { x: W - P.r, y: H - 6, class: "tick", "text-anchor": "end", text: `epoch ${x1}` }));
  series.forEach((k, n) => {
    const pts = rows.map((r, i) => (typeof r[k] === "number" ? `${sx(xs[i])},${sy(r[k])}` : null)).filter(Boolean);
    g.append(svg("polyline", { points: pts.join(" "), class: `line s${n}` }, svg("title", { text: k })));
    g.append(svg("text", { x: W - P.r - 70 * (series.length - 1 - n), y: 12, class: `legendtext s${n}`, "text-anchor": "end", text: k.split("_")[0] }));
  });
  return g;
}

// ------------------------------------------------------------------ try it

function tryCard(m) {
  const prep = m.details.preprocessing;
  const parts = [];
  if (prep) parts.push(imagePanel(m, prep));
  const form = requestPanel(m);
  parts.push(prep ? el("details", { class: "v2" }, el("summary", { text: "Send a V2 request instead" }), form) : form);
  return card("Try it", "try", ...parts);
}

function imagePanel(m, prep) {
  const canvas = el("canvas", { id: "pad", width: 280, height: 280, "aria-label": "Drawing pad" });
  const ctx = canvas.getContext("2d");
  const reset = () => {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  };
  reset();
  let drawing = false;
  let last = null;
  let upload = null;
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return [((e.clientX - r.left) * canvas.width) / r.width, ((e.clientY - r.top) * canvas.height) / r.height];
  };
  const stroke = (to) => {
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineWidth = 22;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    if (last) {
      ctx.moveTo(...last);
      ctx.lineTo(...to);
      ctx.stroke();
    } else {
      ctx.arc(to[0], to[1], 11, 0, 2 * Math.PI);
      ctx.fill();
    }
    last = to;
  };
  canvas.addEventListener("pointerdown", (e) => {
    drawing = true;
    upload = null;
    last = null;
    canvas.setPointerCapture(e.pointerId);
    stroke(at(e));
  });
  canvas.addEventListener("pointermove", (e) => {
    if (drawing) stroke(at(e));
  });
  const stop = () => {
    drawing = false;
    last = null;
  };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);

  const topk = el("select", { id: "topk", "aria-label": "How many labels" }, [1, 3, 5, 10].map((k) => el("option", { value: k, text: `top ${k}`, selected: k === 3 })));
  const file = el("input", { type: "file", id: "upload", accept: "image/png,image/jpeg" });
  const result = el("div", { id: "prediction-panel", class: "predictions", "aria-live": "polite" });
  const classify = el("button", { type: "button", id: "classify", text: "Classify" });
  const send = async (blob) => {
    const body = new FormData();
    body.append("file", blob, "digit.png");
    classify.disabled = true;
    clear(result).append(el("p", { class: "muted", text: "Classifying…" }));
    try {
      const r = await api(`${modelPath(m.name, m.version)}/classify?top_k=${topk.value}`, { method: "POST", body });
      showPredictions(result, r.predictions);
    } catch (e) {
      clear(result).append(el("p", { class: "error", text: e.message }));
    } finally {
      classify.disabled = false;
    }
  };
  classify.addEventListener("click", () => {
    if (upload) send(upload);
    else canvas.toBlob((blob) => send(blob), "image/png");
  });
  file.addEventListener("change", () => {
    const f = file.files && file.files[0];
    if (!f) return;
    upload = f;
    const img = new Image();
    img.onload = () => {
      reset();
      const s = Math.min(canvas.width / img.width, canvas.height / img.height);
      const w = img.width * s;
      const h = img.height * s;
      ctx.drawImage(img, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
      URL.revokeObjectURL(img.src);
      send(f);
    };
    img.src = URL.createObjectURL(f);
  });
  const side = Math.round(Math.sqrt(prep.input_shape[0]));
  const shape = prep.layout === "NC" ? `${side}×${side} (${prep.input_shape[0]} values)` : prep.input_shape.join("×");
  return el(
    "div",
    { class: "trypanel" },
    el("div", { class: "pad" }, canvas, el("p", { class: "muted small", text: `Draw in white on black; sent as a PNG, resized to ${shape} by the server (${prep.color}).` })),
    el(
      "div",
      { class: "controls" },
      el("div", { class: "row" }, classify, el("button", { type: "button", class: "secondary", text: "Clear", onclick: () => { upload = null; file.value = ""; reset(); clear(result); } }), topk),
      el("label", { class: "upload" }, "or upload a PNG/JPEG ", file),
      result,
    ),
  );
}

function showPredictions(target, predictions) {
  clear(target);
  if (!predictions || !predictions.length) return;
  const best = predictions[0];
  target.append(el("p", { class: "best" }, "Prediction: ", el("b", { id: "prediction", text: best.label }), ` (${pct(best.probability)})`));
  const list = el("ol", { class: "bars" });
  for (const p of predictions) {
    const bar = el("span", { class: "bar" });
    bar.style.width = `${Math.max(1, 100 * p.probability)}%`;
    list.append(el("li", { "data-label": p.label }, el("span", { class: "label", text: p.label }), el("span", { class: "track" }, bar), el("span", { class: "n", text: pct(p.probability) })));
  }
  target.append(list);
}

function zeros(datatype, n) {
  if (datatype === "BYTES") return Array(n).fill("");
  if (datatype === "BOOL") return Array(n).fill(false);
  return Array(n).fill(0);
}

function requestPanel(m) {
  const inputs = m.meta.inputs.map((s) => {
    const shape = s.shape.map((d) => (d < 0 ? 1 : d));
    const n = shape.reduce((a, b) => a * b, 1);
    return { name: s.name, shape, datatype: s.datatype, data: zeros(s.datatype, n) };
  });
  const text = el("textarea", { id: "v2-request", rows: 8, spellcheck: "false", "aria-label": "V2 inference request" });
  // laid out for reading, each input's data on one line
  const marked = inputs.map((x, i) => ({ ...x, data: `@data${i}@` }));
  text.value = JSON.stringify({ inputs: marked }, null, 2).replace(/"@data(\d+)@"/g, (_, i) => JSON.stringify(inputs[i].data));
  const out = el("div", { id: "v2-response", class: "v2out", "aria-live": "polite" });
  const send = el("button", { type: "button", id: "send-v2", text: "Send to /infer" });
  send.addEventListener("click", async () => {
    send.disabled = true;
    clear(out).append(el("p", { class: "muted", text: "Running…" }));
    try {
      const body = JSON.parse(text.value);
      const r = await api(`${modelPath(m.name, m.version)}/infer`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      clear(out);
      const first = r.outputs && r.outputs[0];
      const labels = m.details.labels || [];
      if (first && Array.isArray(first.data) && first.shape.length === 2 && first.shape[1] > 1) {
        const row = first.data.slice(0, first.shape[1]);
        const max = Math.max(...row);
        const exp = row.map((x) => Math.exp(x - max));
        const sum = exp.reduce((a, b) => a + b, 0);
        const softmax = row.every((x) => x >= 0 && x <= 1) && Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-3 ? row : exp.map((x) => x / sum);
        const ranked = softmax.map((p, i) => ({ index: i, label: labels[i] ?? String(i), probability: p })).sort((a, b) => b.probability - a.probability).slice(0, 5);
        showPredictions(out, ranked);
      }
      out.append(el("pre", { text: short(JSON.stringify(r, null, 1), 4000) }));
    } catch (e) {
      clear(out).append(el("p", { class: "error", text: e.message }));
    } finally {
      send.disabled = false;
    }
  });
  return el(
    "div",
    { class: "v2form" },
    el("p", { class: "muted small", text: "An Open Inference Protocol request, prefilled with zeros of the model's input shape." }),
    text,
    el("div", { class: "row" }, send),
    out,
  );
}

// ------------------------------------------------------------------ start

async function start() {
  document.getElementById("token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const value = document.getElementById("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    document.getElementById("token").value = "";
    await loadRepository();
  });
  window.addEventListener("hashchange", show);
  const server = loadServer();
  try {
    await loadRepository();
  } catch (e) {
    clear(document.getElementById("models")).append(el("li", { class: "error", text: `Repository: ${e.message}` }));
  }
  await server;
  // on a phone the list folds away once a model is shown (its summary opens it)
  if (window.matchMedia("(max-width: 959px)").matches && (state.summary || []).some((e) => e.state === "READY")) {
    document.getElementById("repository").open = false;
  }
  await show();
  document.body.dataset.ready = "true";
}

start();
