// comfyui-distorch front-end: a placement preview and a streaming timeline drawn on DisTorch loader nodes.
// Dependency-free. Every server call may fail (older server, routes missing): the node then just draws less.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const GB = 1e9;
const DEBOUNCE_MS = 350;
const PAD = 6;
const MARGIN = 15; // LiteGraph's widget margin: drawings line up with the widgets above them
const ROW = 16;
const FONT = "11px sans-serif";
const ERROR_LINES = 6;
const CHART = 48;
const COLORS = { resident: "#4caf50", ring: "#a5d6a7", stores: ["#42a5f5", "#ffa726", "#ab47bc", "#26c6da"],
  back: "#2a2a2a", text: "#dddddd", dim: "#999999", error: "#ff5555", warning: "#ffb74d", copy: "#42a5f5",
  compute: "#4caf50", stall: "#ff5555" };
// model widget -> the model folder the server resolves it in (mirrors the core loaders' inputs)
const MODEL_WIDGETS = [["unet_name", "diffusion_models"], ["ckpt_name", "checkpoints"], ["clip_name", "text_encoders"],
  ["clip_name1", "text_encoders"], ["clip_name2", "text_encoders"], ["clip_name3", "text_encoders"]];
// weight_dtype (UNETLoader's) changes the bytes ComfyUI loads, so the preview is sized with it too
const PLAN_INPUTS = ["compute_device", "virtual_vram_gb", "donor_device", "expert_allocation", "weight_dtype"];

// decimal units like the console plan table ("679.66 MB", "12.14 GB"): a 50 MB model must not read "0.05 GB"
function bytes(n) {
  const value = Number(n) || 0;
  for (const [size, unit] of [[GB, "GB"], [1e6, "MB"], [1e3, "KB"]]) {
    if (Math.abs(value) >= size) return `${(value / size).toFixed(2)} ${unit}`;
  }
  return `${Math.round(value)} B`;
}
const blocks = (n) => (n == null ? "? blocks" : `${n} block${n === 1 ? "" : "s"}`);
// server messages count raw bytes ("budget 31578888 bytes"): show them in the same units as the bars
const readable = (text) => String(text).replace(/\b(\d{4,}) bytes\b/g, (_, n) => bytes(Number(n)));
const isDisTorch = (name) => typeof name === "string" && name.startsWith("DisTorch");
const widgetValue = (node, name) => node.widgets?.find((w) => w.name === name)?.value;

async function getJson(route, options) {
  // null when the route is unreachable or answers something that is not JSON
  try {
    const response = await api.fetchApi(route, options);
    const body = await response.json();
    return { ok: response.ok, body };
  } catch (e) {
    return null;
  }
}

function previewRequest(node) {
  const present = MODEL_WIDGETS.filter(([name]) => widgetValue(node, name) != null);
  if (!present.length) return null;
  const body = { model_folder: present[0][1], model_names: present.map(([name]) => String(widgetValue(node, name))) };
  for (const name of PLAN_INPUTS) body[name] = widgetValue(node, name);
  return body;
}

function schedulePreview(node) {
  clearTimeout(node.__distorchTimer);
  node.__distorchTimer = setTimeout(() => refreshPreview(node), DEBOUNCE_MS);
}

async function refreshPreview(node) {
  const body = previewRequest(node);
  if (!body) return;
  const seq = (node.__distorchSeq = (node.__distorchSeq || 0) + 1);
  const answer = await getJson("/distorch/preview", { method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json" } });
  if (seq !== node.__distorchSeq) return; // a newer request is on its way: its answer wins
  let state = null;
  if (answer?.ok) state = { preview: answer.body };
  else if (answer?.body?.error) state = { error: answer.body };
  setWidgetState(node, "distorch_preview", state);
}

function setWidgetState(node, name, value) {
  const widget = node.widgets?.find((w) => w.name === name);
  if (!widget) return;
  widget.state = value;
  const height = node.computeSize?.()[1];
  if (height && node.size) node.setSize?.([node.size[0], Math.max(height, 0)]);
  node.setDirtyCanvas?.(true, true);
}

// Text is wrapped, never squeezed: computeSize needs the same line count as draw, so both measure with one context
let measurer;
function measuring() {
  if (measurer === undefined) {
    try {
      measurer = globalThis.document?.createElement("canvas").getContext("2d") || null;
    } catch (e) {
      measurer = null;
    }
  }
  if (!measurer) return { measureText: (t) => ({ width: String(t).length * 6 }) }; // no DOM: ~6 px a glyph
  measurer.font = FONT;
  return measurer;
}

function wrap(text, width, maxLines = Infinity) {
  const ctx = measuring();
  const lines = [];
  let line = "";
  for (const word of String(text).split(/\s+/).filter(Boolean)) {
    const next = line ? `${line} ${word}` : word;
    if (line && ctx.measureText(next).width > width) {
      lines.push(line);
      line = word;
    } else line = next;
  }
  if (line) lines.push(line);
  if (lines.length > maxLines) {
    lines.length = maxLines;
    lines[maxLines - 1] += " …";
  }
  return lines;
}

const inner = (width) => Math.max(width - 2 * MARGIN, 40);

// One row per device: a bar scaled to the device's memory, stacked resident / ring / streamed-per-store.
function deviceRows(preview) {
  const rows = new Map();
  let store = 0;
  for (const entry of preview.devices || []) {
    const row = rows.get(entry.device) || { device: entry.device, total: entry.total_bytes || 0, parts: [], notes: [] };
    if (entry.role === "compute") {
      row.parts.push([entry.bytes, COLORS.resident], [entry.ring_bytes || 0, COLORS.ring]);
      row.notes.push(`compute ${bytes(entry.bytes)} (${blocks(entry.blocks)})` +
        (entry.ring_bytes ? ` + ring ${bytes(entry.ring_bytes)}` : ""));
    } else {
      row.parts.push([entry.bytes, COLORS.stores[store++ % COLORS.stores.length]]);
      row.notes.push(entry.blocks === 0 && !entry.bytes ? "streams nothing"
        : `streams ${bytes(entry.bytes)} (${blocks(entry.blocks)})`);
    }
    rows.set(entry.device, row);
  }
  return [...rows.values()];
}

function errorLines(error, width) {
  const where = error.token != null ? ` [token '${error.token}' at ${error.position}]` : "";
  return wrap(readable(error.error) + where, inner(width), ERROR_LINES);
}

// "in fp32": the dtype(s) ComfyUI loads the file(s) in, which sizes the plan (absent from older servers)
function loadedAs(preview) {
  const labels = [...new Set((preview.loaded_as || []).filter(Boolean))];
  return labels.length ? ` in ${labels.join(" + ")}` : "";
}

// What the plan is for: the automatic budget plans for the VRAM free now (the run re-plans with what is free then)
function budgetNote(preview) {
  if (!preview.auto) return null;
  const compute = (preview.devices || []).find((entry) => entry.role === "compute");
  const free = compute?.budget_bytes == null ? "" : ` for the ${bytes(compute.budget_bytes)} free now`;
  return `auto: planned${free} on ${preview.compute_device}; each run re-plans with what is free then`;
}

function previewLines(state, width) {
  // [kind, payload] in drawing order: a heading, the budget note, a warning, then per device a bar and its label
  if (state.error) return errorLines(state.error, width).map((line) => ["error", line]);
  const p = state.preview;
  const lines = wrap(`DisTorch plan: ${bytes(p.model_bytes)}${loadedAs(p)}, ${blocks(p.block_count)}`, inner(width))
    .map((line) => ["heading", line]);
  const note = budgetNote(p);
  if (note) lines.push(...wrap(note, inner(width)).map((line) => ["heading", line]));
  // a budget below the minimum runs with the minimum: a warning (amber), never an error, since the graph runs
  if (p.warning) lines.push(...wrap(readable(p.warning), inner(width), ERROR_LINES).map((line) => ["warning", line]));
  for (const row of deviceRows(p)) {
    lines.push(["bar", row]);
    const total = row.total ? ` of ${bytes(row.total)}` : "";
    for (const line of wrap(`${row.device}: ${row.notes.join(", ")}${total}`, inner(width))) lines.push(["label", line]);
  }
  return lines;
}

function previewHeight(state, width = 320) {
  return state ? PAD * 2 + ROW * previewLines(state, width).length : 0;
}

function drawPreview(ctx, width, y, state) {
  ctx.save();
  ctx.font = FONT;
  ctx.textBaseline = "top";
  const x = MARGIN, w = inner(width);
  let top = y + PAD;
  const colors = { error: COLORS.error, warning: COLORS.warning, heading: COLORS.dim, label: COLORS.text };
  for (const [kind, item] of previewLines(state, width)) {
    if (kind === "bar") {
      const used = item.parts.reduce((s, [n]) => s + (n || 0), 0);
      const scale = w / Math.max(item.total, used, 1);
      ctx.fillStyle = COLORS.back;
      ctx.fillRect(x, top + 2, w, ROW - 4);
      let left = x;
      for (const [n, color] of item.parts) {
        ctx.fillStyle = color;
        ctx.fillRect(left, top + 2, Math.max((n || 0) * scale, n > 0 ? 2 : 0), ROW - 4); // a small store stays visible
        left += (n || 0) * scale;
      }
    } else {
      ctx.fillStyle = colors[kind];
      ctx.fillText(item, x, top + 2);
    }
    top += ROW;
  }
  ctx.restore();
}

// The last prompt's forwards: per forward, compute time (green, stall in red at its base) next to copy time.
const LEGEND = [["compute", COLORS.compute], ["copy", COLORS.copy], ["stall", COLORS.stall]];

function timelineSummary(record) {
  if (!record.per_forward?.length) return "last prompt: nothing streamed (all weights stayed on the compute device)";
  const overlap = record.overlap == null ? "-" : `${Math.round(record.overlap * 100)}%`;
  const rate = record.gbps == null ? "-" : record.gbps.toFixed(1);
  const perForward = record.seconds_per_forward == null ? "-" : record.seconds_per_forward.toFixed(3);
  return `last prompt: ${record.forwards} fwd, ${perForward} s/fwd, ${rate} GB/s, overlap ${overlap}`;
}

function timelineHeight(record, width = 320) {
  if (!record) return 0;
  const text = ROW * wrap(timelineSummary(record), inner(width)).length;
  return PAD * 2 + text + (record.per_forward?.length ? CHART + ROW : 0);
}

function drawTimeline(ctx, width, y, record) {
  const x = MARGIN, w = inner(width), h = CHART;
  ctx.save();
  ctx.font = FONT;
  ctx.textBaseline = "top";
  ctx.fillStyle = COLORS.dim;
  let top = y + PAD;
  for (const line of wrap(timelineSummary(record), w)) {
    ctx.fillText(line, x, top + 2);
    top += ROW;
  }
  const forwards = (record.per_forward || []).slice(-64);
  if (!forwards.length) return ctx.restore();
  const most = Math.max(...forwards.map((f) => Math.max(f.forward_s || 0, f.copy_s || 0)), 1e-9);
  const step = w / forwards.length;
  const bar = Math.max(1, Math.min(step / 2 - 1, 24));
  ctx.fillStyle = COLORS.back;
  ctx.fillRect(x, top, w, h);
  forwards.forEach((f, i) => {
    const left = x + i * step + Math.max(0, (step - 2 * bar - 1) / 2); // centre each pair in its slot
    const column = (seconds, color, offset) => {
      const height = (h * (seconds || 0)) / most;
      ctx.fillStyle = color;
      ctx.fillRect(left + offset, top + h - height, bar, Math.max(height, seconds > 0 ? 1 : 0));
    };
    column(f.forward_s, COLORS.compute, 0);
    column(f.stall_s, COLORS.stall, 0);
    column(f.copy_s, COLORS.copy, bar + 1);
  });
  // legend and scale: what the colours are, and what the full height of the chart stands for
  top += h;
  let left = x;
  for (const [name, color] of LEGEND) {
    ctx.fillStyle = color;
    ctx.fillRect(left, top + 5, 8, 8);
    ctx.fillStyle = COLORS.dim;
    ctx.fillText(name, left + 11, top + 3);
    left += 11 + ctx.measureText(name).width + 10;
  }
  const scale = `top = ${most >= 1 ? most.toFixed(2) + " s" : (most * 1000).toFixed(1) + " ms"}`;
  ctx.fillText(scale, Math.max(left, x + w - ctx.measureText(scale).width), top + 3);
  ctx.restore();
}

function addDrawing(node, name, height, draw) {
  const widget = {
    name, type: name, value: null, state: null, serialize: false, options: { serialize: false },
    computeSize: (width) => [width, height(widget.state, width)],
    draw(ctx, n, width, y) {
      if (!widget.state || !height(widget.state, width)) return;
      try {
        draw(ctx, width, y, widget.state);
      } catch (e) {
        widget.state = null; // a malformed answer must never break the canvas
      }
    },
  };
  node.addCustomWidget ? node.addCustomWidget(widget) : node.widgets?.push(widget);
}

function watchInputs(node) {
  for (const widget of node.widgets || []) {
    if (widget.__distorchWatched || widget.name?.startsWith("distorch_")) continue;
    const original = widget.callback;
    widget.callback = function (...args) {
      const result = original?.apply(this, args);
      schedulePreview(node);
      return result;
    };
    widget.__distorchWatched = true;
  }
}

function setupNode(node) {
  addDrawing(node, "distorch_preview", previewHeight, drawPreview);
  addDrawing(node, "distorch_timeline", timelineHeight, drawTimeline);
  watchInputs(node);
  schedulePreview(node);
}

async function refreshTelemetry() {
  const answer = await getJson("/distorch/telemetry");
  const records = Array.isArray(answer?.body) ? answer.body : answer?.body?.records;
  if (!answer?.ok || !Array.isArray(records) || !records.length) return;
  for (const node of app.graph?._nodes || []) {
    if (!isDisTorch(node.comfyClass || node.type)) continue;
    const mine = records.filter((r) => r && r.node_id != null && String(r.node_id) === String(node.id));
    const record = (mine.length ? mine : records).at(-1);
    if (record && typeof record === "object") setWidgetState(node, "distorch_timeline", record);
  }
}

let telemetryTimer = null;
function scheduleTelemetry() {
  clearTimeout(telemetryTimer);
  telemetryTimer = setTimeout(refreshTelemetry, 200);
}

app.registerExtension({
  name: "comfyui-distorch.preview",
  setup() {
    api.addEventListener("execution_success", scheduleTelemetry);
    // older front-ends only announce the end of a prompt as "executing" with no node
    api.addEventListener("executing", (event) => event?.detail == null && scheduleTelemetry());
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isDisTorch(nodeData?.name)) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const result = created?.apply(this, args);
      try { setupNode(this); } catch (e) { console.warn("[DisTorch] preview disabled on this node:", e); }
      return result;
    };
    const configured = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (...args) {
      const result = configured?.apply(this, args);
      watchInputs(this); // widgets loaded from a saved workflow
      schedulePreview(this);
      return result;
    };
    const changed = nodeType.prototype.onWidgetChanged;
    nodeType.prototype.onWidgetChanged = function (...args) {
      const result = changed?.apply(this, args);
      schedulePreview(this);
      return result;
    };
  },
});
