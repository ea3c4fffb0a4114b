// Runs web/distorch.js under Node with stand-ins for ComfyUI's app.js/api.js and a recording canvas context.
// Prints one JSON object of what the extension requested and drew; tests/unit/test_web_extension.py checks it.
import { registered, app } from "./scripts/app.js";
import { api, requests, answers, listeners } from "./scripts/api.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const report = {};

class FakeNode {
  constructor() {
    this.id = 7;
    this.comfyClass = "DisTorchUNETLoader";
    this.size = [320, 200];
    this.widgets = [["unet_name", "distorch-tiny-flux.safetensors"], ["weight_dtype", "default"],
      ["compute_device", "cuda:0"], ["virtual_vram_gb", 4.0], ["donor_device", "cpu"], ["expert_allocation", ""]]
      .map(([name, value]) => ({ name, value, callback: () => {} }));
  }
  addCustomWidget(widget) { this.widgets.push(widget); return widget; }
  computeSize() {
    return [320, 26 + this.widgets.reduce((sum, w) => sum + (w.computeSize ? w.computeSize(320)[1] : 20), 0)];
  }
  setSize(size) { this.size = size; }
  setDirtyCanvas() {}
}

function draw(node, name) {
  const texts = [];
  const ctx = { font: "", fillStyle: "", textBaseline: "", save() {}, restore() {}, fillRect() {},
    measureText: (t) => ({ width: t.length * 6 }), fillText(t) { texts.push({ text: t, color: ctx.fillStyle }); } };
  const widget = node.widgets.find((w) => w.name === name);
  widget.draw(ctx, node, 320, 0, 20);
  return { texts, height: widget.computeSize(320)[1] };
}

const extension = (await import("./extensions/comfyui-distorch/distorch.js"), registered[0]);
extension.setup?.();
const Type = class extends FakeNode {};
await extension.beforeRegisterNodeDef(Type, { name: "DisTorchUNETLoader" });
await extension.beforeRegisterNodeDef(class {}, { name: "KSampler" }); // must leave other nodes alone
const node = new Type();
node.onNodeCreated();
app.graph._nodes.push(node);

answers.push({ status: 200, body: { model_bytes: 2e9, block_count: 2, loaded_as: ["fp32"], devices: [
  { device: "cuda:0", role: "compute", bytes: 1.2e9, ring_bytes: 3e8, blocks: 1, total_bytes: 24e9 },
  { device: "cpu", role: "store", bytes: 8e8, blocks: 1, total_bytes: 64e9 }] } });
await sleep(500);
report.first = { requests: requests.splice(0), drawing: draw(node, "distorch_preview") };

answers.push({ status: 400, body: { error: "allocation string 'cuda:0,8gx': unknown unit 'gx' at position 8",
  token: "gx", position: 8 } });
const allocation = node.widgets.find((w) => w.name === "expert_allocation");
for (const text of ["c", "cuda:0,8g", "cuda:0,8gx"]) { allocation.value = text; allocation.callback(text); }
await sleep(500);
report.error = { requests: requests.splice(0), drawing: draw(node, "distorch_preview") };

// the automatic budget, raised to the minimum: a plan that runs, so an amber warning and no red
answers.push({ status: 200, body: { model_bytes: 2e9, block_count: 2, auto: true, compute_device: "cuda:0",
  warning: "weight budget 0.30 GB on cuda:0 is below the minimum 1.50 GB (non-block modules 100000000 bytes); "
    + "running with the minimum", devices: [
  { device: "cuda:0", role: "compute", bytes: 1.2e9, ring_bytes: 3e8, blocks: 1, budget_bytes: 3e8, total_bytes: 24e9 },
  { device: "cpu", role: "store", bytes: 8e8, blocks: 1, total_bytes: 64e9 }] } });
node.widgets.find((w) => w.name === "virtual_vram_gb").callback("auto");
await sleep(500);
report.warning = { requests: requests.splice(0), drawing: draw(node, "distorch_preview") };

answers.push("throw"); // the server is gone: the node must draw nothing and throw nothing
allocation.callback("x");
await sleep(500);
report.unreachable = { requests: requests.splice(0), drawing: draw(node, "distorch_preview") };

answers.push({ status: 200, body: { available: true, records: [{ forwards: 2, seconds_per_forward: 0.5, gbps: 12.5,
  overlap: 0.9, per_forward: [{ forward_s: 0.5, copy_s: 0.3, stall_s: 0.05 }, { forward_s: 0.5, copy_s: 0.3, stall_s: 0 }] }] } });
listeners.execution_success?.({ detail: { prompt_id: "p" } });
await sleep(400);
report.telemetry = { requests: requests.splice(0), drawing: draw(node, "distorch_timeline") };
report.serialized = node.widgets.filter((w) => w.name.startsWith("distorch_")).map((w) => w.options?.serialize);
console.log(JSON.stringify(report));
