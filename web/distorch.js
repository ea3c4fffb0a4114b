// comfyui-distorch front-end: a placement preview and a streaming timeline drawn on DisTorch loader nodes.
// Dependency-free. Every server call may fail (older server, routes missing): the node then just draws less.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const GB = 1e9;
const DEBOUNCE_MS = 350;
const PAD = 6;
const ROW = 16;
const COLORS = { resident: "#4caf50", ring: "#a5d6a7", stores: ["#42a5f5", "#ffa726", "#ab47bc", "#26c6da"],
  back: "#2a2a2a", text: "#dddddd", dim: "#999999", error: "#ff5555", copy: "#42a5f5", compute: "#4caf50",
  stall: "#ff5555" };
// model widget -> the model folder the server resolves it in (mirrors the core loaders' inputs)
const MODEL_WIDGETS = [["unet_name", "diffusion_models"], ["ckpt_name", "checkpoints"], ["clip_name", "text_encoders"],
  ["clip_name1", "text_encoders"], ["clip_name2", "text_encoders"], ["clip_name3", "text_encoders"]];
const PLAN_INPUTS = ["compute_device", "virtual_vram_gb", "donor_device", "expert_allocation"];

const gb = (n) => `${((n || 0) / GB).toFixed(2)} GB`;
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

function wrap(ctx, text, width, maxLines) {
  const lines = [];
  let line = "";
  for (const word of String(text).split(/\s+/)) {
    const next = line ? `${line} ${word}` : word;
    if (line && ctx.measureText(next).width > width) {
      lines.push(line);
      line = word;
    } else line = next;
  }
  if (line) lines.push(line);
  return lines.slice(0, maxLines);
}

// One row per device: a bar scaled to the device's memory, stacked resident / ring / streamed-per-store.
function deviceRows(preview) {
  const rows = new Map();
  let store = 0;
  for (const entry of preview.devices || []) {
    const row = rows.get(entry.device) || { device: entry.device, total: entry.total_bytes || 0, parts: [], notes: [] };
    if (entry.role === "compute") {
      row.parts.push([entry.bytes, COLORS.resident], [entry.ring_bytes || 0, COLORS.ring]);
      row.notes.push(`compute ${gb(entry.bytes)} (${entry.blocks ?? "?"} blocks)` +
        (entry.ring_bytes ? ` + ring ${gb(entry.ring_bytes)}` : ""));
    } else {
      row.parts.push([entry.bytes, COLORS.stores[store++ % COLORS.stores.length]]);
      row.notes.push(`streams ${gb(entry.bytes)} (${entry.blocks ?? "?"} blocks)`);
    }
    rows.set(entry.device, row);
  }
  return [...rows.values()];
}

function previewHeight(state) {
  if (!state) return 0;
  if (state.error) return PAD * 2 + ROW * 4;
  return PAD * 2 + ROW * (1 + 2 * deviceRows(state.preview).length);
}

function drawPreview(ctx, width, y, state) {
  ctx.save();
  ctx.font = "11px sans-serif";
  ctx.textBaseline = "top";
  const x = PAD, w = width - 2 * PAD;
  let top = y + PAD;
  if (state.error) {
    ctx.fillStyle = COLORS.error;
    const where = state.error.token != null ? ` [token '${state.error.token}' at ${state.error.position}]` : "";
    for (const line of wrap(ctx, state.error.error + where, w, 4)) {
      ctx.fillText(line, x, top);
      top += ROW;
    }
    ctx.restore();
    return;
  }
  const p = state.preview;
  ctx.fillStyle = COLORS.dim;
  ctx.fillText(`DisTorch plan: ${gb(p.model_bytes)}, ${p.block_count} blocks`, x, top);
  top += ROW;
  for (const row of deviceRows(p)) {
    const used = row.parts.reduce((s, [n]) => s + n, 0);
    const scale = w / Math.max(row.total, used, 1);
    ctx.fillStyle = COLORS.back;
    ctx.fillRect(x, top, w, ROW - 4);
    let left = x;
    for (const [bytes, color] of row.parts) {
      ctx.fillStyle = color;
      ctx.fillRect(left, top, Math.max(bytes * scale, bytes > 0 ? 1 : 0), ROW - 4);
      left += bytes * scale;
    }
    ctx.fillStyle = COLORS.text;
    ctx.fillText(`${row.device}: ${row.notes.join(", ")} of ${gb(row.total)}`, x, top + ROW, w); // maxWidth squeezes long labels
    top += 2 * ROW;
  }
  ctx.restore();
}

// The last prompt's forwards: per forward, compute time (green, stall in red at its base) next to copy time.
function timelineHeight(state) {
  return state?.per_forward?.length ? PAD * 2 + ROW + 48 : 0;
}

function drawTimeline(ctx, width, y, record) {
  const forwards = record.per_forward.slice(-64);
  const x = PAD, w = width - 2 * PAD, h = 48;
  const top = y + PAD + ROW;
  const most = Math.max(...forwards.map((f) => Math.max(f.forward_s || 0, f.copy_s || 0)), 1e-9);
  const step = w / forwards.length;
  const bar = Math.max(1, step / 2 - 1);
  ctx.save();
  ctx.font = "11px sans-serif";
  ctx.textBaseline = "top";
  ctx.fillStyle = COLORS.dim;
  const overlap = record.overlap == null ? "-" : `${Math.round(record.overlap * 100)}%`;
  const rate = record.gbps == null ? "-" : record.gbps.toFixed(1);
  const perForward = record.seconds_per_forward == null ? "-" : record.seconds_per_forward.toFixed(3);
  ctx.fillText(`last prompt: ${record.forwards} fwd, ${perForward} s/fwd, ${rate} GB/s, overlap ${overlap}`, x, y + PAD, w);
  ctx.fillStyle = COLORS.back;
  ctx.fillRect(x, top, w, h);
  forwards.forEach((f, i) => {
    const left = x + i * step;
    const column = (seconds, color, offset) => {
      const height = (h * (seconds || 0)) / most;
      ctx.fillStyle = color;
      ctx.fillRect(left + offset, top + h - height, bar, height);
    };
    column(f.forward_s, COLORS.compute, 0);
    column(f.stall_s, COLORS.stall, 0);
    column(f.copy_s, COLORS.copy, bar + 1);
  });
  ctx.restore();
}

function addDrawing(node, name, height, draw) {
  const widget = {
    name, type: name, value: null, state: null, serialize: false, options: { serialize: false },
    computeSize: (width) => [width, height(widget.state)],
    draw(ctx, n, width, y) {
      if (!widget.state || !height(widget.state)) return;
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
    if (record?.per_forward) setWidgetState(node, "distorch_timeline", record);
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
