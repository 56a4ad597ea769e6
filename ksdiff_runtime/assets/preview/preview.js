// ksdiff-runtime live preview: the frames of one stream, drawn as a face on a canvas.
//
// The feed (ws://<this host>/ws, ksdiff_runtime/outputs/preview.py) sends batches
// {"sent": <server time.time()>, "items": [...]} holding the latest frame and audio level of each
// open stream and the list of open streams. Frames are kept per stream (latest wins) and drawn by
// requestAnimationFrame; a frame is drawn once, when it is new. A stream's last frame comes with the
// list that ends it, or before: it is drawn, then, with no stream chosen, the neutral face.
//
// Conventions (protocol/SPEC.md 5.2, 5.3): head [pitch, yaw, roll] in radians, pitch + = chin
// down, yaw + = the face turns toward its own left (the viewer's right), roll + = tilt toward its
// own right shoulder; gaze [leftYaw, leftPitch, rightYaw, rightPitch], pitch + = looking down. The
// face's own left eye is on the viewer's right.
//
// window.ksdiffPreview holds what the page measured (for tests and benchmarks).
"use strict";

const W = 400, H = 480;          // the canvas in CSS pixels
const CX = 200, CY = 215;        // the face's centre
const DEPTH = 120;               // px: how far the features sit in front of the head's axis (yaw, pitch)
const NECK = {x: CX, y: 410};    // roll pivots here
const MOUTH_Y = 62;              // the mouth's centre below CY, at rest
const KEEP = 2000;               // latencies kept for the readout's percentiles
const COLORS = {
  bg: "#2b3240", skin: "#f3cfb0", shade: "#dcae8c", hair: "#4a3426", brow: "#5a3b28", white: "#fbfbf8",
  iris: "#4f7fa8", pupil: "#111418", lid: "#7a5040", lip: "#cf6a6e", lipLine: "#b0505a",
  mouth: "#2b0c12", teeth: "#f4f1ea", tongue: "#7c2f3a", blush: "rgba(232, 120, 120, 0.22)",
};

const state = {
  index: {},            // blendshape name -> position in a frame's "bs", from the server's hello
  streams: [],          // [{stream, source}] open streams, in start order
  chosen: null,         // the stream drawn
  userChose: false,     // the user picked it (else the first open stream is followed)
  frames: new Map(),    // stream -> its latest frame (with .sent, the batch's send time)
  levels: new Map(),    // stream -> its latest audio level
  drawn: null,          // the frame shown (null: the neutral face)
  final: null,          // the chosen stream ended: its frame not yet drawn, drawn by the next tick
  firstDrawn: null,
};

const hooks = window.ksdiffPreview = {
  connected: false, connections: 0, batches: 0, framesReceived: 0, framesDrawn: 0,
  firstFrameMs: null,   // performance.now() when the first frame was drawn (0 = navigation start)
  firstMotionMs: null,  // ... when a drawn frame first differed from the first one drawn
  lastDrawn: null,      // {stream, index, t_audio, last, jawOpen, runtimeMs, pageMs}
  showing: null,        // {stream, index} of the frame shown; null: the neutral face
  pageLatencyMs: [],    // per drawn frame: drawn (this clock) - sent (the server's clock), ms
  runtimeLatencyMs: [], // per drawn frame: published_ns - captured_ns, ms (null: unknown)
  chosen: null, streams: [],
  geometry: {width: W, height: H, mouth: {x: CX - 70, y: CY + MOUTH_Y - 27, w: 140, h: 110}},  // the mouth's region
};

const canvas = document.getElementById("face");
const ctx = canvas.getContext("2d");
const ui = {
  status: document.getElementById("status"), stream: document.getElementById("stream"),
  level: document.getElementById("level"), meter: document.getElementById("meter-fill"),
  runtimeMs: document.getElementById("runtime-ms"), pageMs: document.getElementById("page-ms"),
  frame: document.getElementById("frame"),
};

// --- the feed ---------------------------------------------------------------------------------
let retryMs = 250;

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.onopen = () => {
    hooks.connected = true;
    hooks.connections += 1;
    retryMs = 250;
    setStatus("live", "live");
  };
  ws.onmessage = (event) => receive(JSON.parse(event.data));
  ws.onclose = () => {
    hooks.connected = false;
    setStatus(`disconnected; retrying in ${(retryMs / 1000).toFixed(1)} s`, "waiting");
    setTimeout(connect, retryMs);   // serve restarted or stopped: try again, backing off to 2 s
    retryMs = Math.min(2 * retryMs, 2000);
  };
}

function receive(batch) {
  hooks.batches += 1;
  const items = batch.items;
  for (const item of items) {
    if (item.type === "hello") {
      state.index = Object.fromEntries(item.blendshapes.map((name, i) => [name, i]));
      state.frames.clear();  // a new connection (perhaps a new serve): its state replaces ours
      state.levels.clear();
      state.streams = [];
      state.final = null;
    }
  }
  // A frame is kept only for a stream the page knows: those it knew, before the stream list (which may
  // end them: a stream's last frame comes with its end), then those the list opens.
  const known = new Set(state.streams.map((s) => s.stream));
  for (const item of items) {
    if (item.type === "frame" && known.has(item.stream)) keepFrame(item, batch.sent);
  }
  for (const item of items) {
    if (item.type === "streams") setStreams(item.streams);
  }
  const open = new Set(state.streams.map((s) => s.stream));
  for (const item of items) {
    if (!open.has(item.stream)) continue;
    if (item.type === "frame" && !known.has(item.stream)) {
      keepFrame(item, batch.sent);
    } else if (item.type === "level") {
      state.levels.set(item.stream, item);
    }
  }
}

function keepFrame(item, sent) {
  item.sent = sent;
  state.frames.set(item.stream, item);
  hooks.framesReceived += 1;
}

function setStreams(streams) {
  state.streams = streams;
  const ids = streams.map((s) => s.stream);
  const ended = ids.includes(state.chosen) ? undefined : state.frames.get(state.chosen);
  if (ended && ended !== state.drawn) state.final = ended;   // the chosen stream's last frame: drawn all the same
  for (const sid of [...state.frames.keys()]) if (!ids.includes(sid)) state.frames.delete(sid);
  for (const sid of [...state.levels.keys()]) if (!ids.includes(sid)) state.levels.delete(sid);
  if (!ids.includes(state.chosen) || !state.userChose) {
    state.chosen = ids.length ? ids[0] : null;   // the first open stream, until the user picks one
    state.userChose = false;
  }
  ui.stream.replaceChildren(...(streams.length ? streams.map((s) => new Option(`${s.stream} (${s.source})`, s.stream))
                                                : [new Option("(no stream)", "")]));
  ui.stream.value = state.chosen ?? "";
  hooks.chosen = state.chosen;
  hooks.streams = ids;
}

ui.stream.addEventListener("change", () => {
  state.chosen = ui.stream.value || null;
  state.userChose = state.chosen !== null;
  hooks.chosen = state.chosen;
});

function setStatus(text, kind) {
  ui.status.textContent = text;
  ui.status.className = `value ${kind}`;
}

// --- drawing ----------------------------------------------------------------------------------
const NEUTRAL = {bs: [], head: [0, 0, 0], gaze: [0, 0, 0, 0]};
const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));

function weights(frame) {
  return (name) => clamp(frame.bs[state.index[name]] ?? 0, 0, 1);
}

function drawFace(frame) {
  const w = weights(frame);
  const [pitch, yaw, roll] = frame.head;
  const g = ctx;
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== W * dpr) {
    canvas.width = W * dpr;
    canvas.height = H * dpr;
  }
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.fillStyle = COLORS.bg;
  g.fillRect(0, 0, W, H);

  // Head rotation as 2D transforms: roll turns the head about the neck (screen angles run
  // clockwise, so a tilt toward the face's own right shoulder, the viewer's left, is -roll);
  // yaw and pitch move the features across and down the face by DEPTH·sin(angle) and
  // foreshorten them by cos(angle); the outline moves a third as far.
  const fx = DEPTH * Math.sin(yaw), fy = DEPTH * Math.sin(pitch);
  const sx = Math.cos(yaw), sy = Math.cos(pitch);
  const at = (x, y) => ({x: CX + fx + x * sx, y: CY + fy + y * sy});  // a feature, from face coordinates
  g.save();
  g.translate(NECK.x, NECK.y);
  g.rotate(-roll);
  g.translate(-NECK.x, -NECK.y);

  // neck, ears, face outline (the jaw drops with jawOpen), hair
  const jaw = w("jawOpen");
  const jawShift = (w("jawLeft") - w("jawRight")) * 14;  // the jaw moves toward the face's own left: +x
  const ox = fx / 3, oy = fy / 3;
  g.fillStyle = COLORS.shade;
  g.fillRect(CX - 45, CY + 150, 90, 120);
  for (const side of [-1, 1]) {
    g.beginPath();
    g.ellipse(CX + ox + side * 128 * sx, CY + oy + 5, 16, 30, 0, 0, 2 * Math.PI);
    g.fill();
  }
  const chinY = CY + 165 + jaw * 55 + oy;
  const puff = w("cheekPuff") * 14;
  g.beginPath();
  g.ellipse(CX + ox, CY + oy, 130, 150, 0, Math.PI, 2 * Math.PI);
  g.bezierCurveTo(CX + ox + 130 + puff, CY + oy + 105, CX + ox + jawShift + 70, chinY, CX + ox + jawShift, chinY);
  g.bezierCurveTo(CX + ox + jawShift - 70, chinY, CX + ox - 130 - puff, CY + oy + 105, CX + ox - 130, CY + oy);
  g.closePath();
  g.fillStyle = COLORS.skin;
  g.fill();
  g.lineWidth = 2;
  g.strokeStyle = COLORS.shade;
  g.stroke();
  g.beginPath();
  g.ellipse(CX + ox, CY + oy - 40, 138, 118, 0, Math.PI * 1.02, Math.PI * 1.98);
  g.quadraticCurveTo(CX + ox + 40, CY + oy - 125, CX + ox - 10, CY + oy - 105);
  g.quadraticCurveTo(CX + ox - 90, CY + oy - 95, CX + ox - 136, CY + oy - 48);
  g.fillStyle = COLORS.hair;
  g.fill();

  // cheeks
  g.fillStyle = COLORS.blush;
  for (const [side, name] of [[1, "Left"], [-1, "Right"]]) {
    const c = at(side * 78, 38 - w(`cheekSquint${name}`) * 8);
    g.beginPath();
    g.ellipse(c.x, c.y, 20 + puff, 13 + puff / 2, 0, 0, 2 * Math.PI);
    g.fill();
  }

  drawEyes(w, frame.gaze, at, sx);
  drawBrows(w, at);

  // nose: sneer lifts the nostrils
  const sneer = (w("noseSneerLeft") + w("noseSneerRight")) / 2;
  const tip = at(0, 24 - sneer * 5);
  g.strokeStyle = COLORS.shade;
  g.lineWidth = 3;
  g.lineCap = "round";
  g.beginPath();
  const bridge = at(-2, -12);
  g.moveTo(bridge.x, bridge.y);
  g.quadraticCurveTo(tip.x - 10 * sx, tip.y - 2, tip.x - 12 * sx, tip.y + 4);
  g.quadraticCurveTo(tip.x, tip.y + 10, tip.x + 12 * sx, tip.y + 4);
  g.stroke();

  drawMouth(w, at, sx, jaw, jawShift);
  g.restore();
}

function drawEyes(w, gaze, at, sx) {
  const g = ctx;
  const PX_PER_RAD = 30;  // 30° of gaze moves the iris ~16 px
  for (const [side, name, yawIdx] of [[1, "Left", 0], [-1, "Right", 2]]) {
    const c = at(side * 52, -22);
    const open = clamp(1 - w(`eyeBlink${name}`) + 0.35 * w(`eyeWide${name}`) - 0.25 * w(`eyeSquint${name}`), 0, 1.35);
    const hw = 24 * sx, hh = 12 * open;
    g.lineWidth = 2.5;
    g.strokeStyle = COLORS.lid;
    g.lineCap = "round";
    if (hh < 1) {   // closed: the lid line
      g.beginPath();
      g.moveTo(c.x - hw, c.y);
      g.quadraticCurveTo(c.x, c.y + 6, c.x + hw, c.y);
      g.stroke();
      continue;
    }
    const almond = () => {
      g.beginPath();
      g.moveTo(c.x - hw, c.y);
      g.quadraticCurveTo(c.x, c.y - 2 * hh, c.x + hw, c.y);
      g.quadraticCurveTo(c.x, c.y + 1.7 * hh, c.x - hw, c.y);
      g.closePath();
    };
    g.save();
    almond();
    g.fillStyle = COLORS.white;
    g.fill();
    g.clip();
    const ix = c.x + gaze[yawIdx] * PX_PER_RAD * 1.8, iy = c.y + gaze[yawIdx + 1] * PX_PER_RAD * 1.8;
    g.fillStyle = COLORS.iris;
    g.beginPath();
    g.arc(ix, iy, 10, 0, 2 * Math.PI);
    g.fill();
    g.fillStyle = COLORS.pupil;
    g.beginPath();
    g.arc(ix, iy, 4.5, 0, 2 * Math.PI);
    g.fill();
    g.fillStyle = COLORS.white;
    g.beginPath();
    g.arc(ix + 3, iy - 3, 1.8, 0, 2 * Math.PI);
    g.fill();
    g.restore();
    g.beginPath();   // the upper lid
    g.moveTo(c.x - hw, c.y);
    g.quadraticCurveTo(c.x, c.y - 2 * hh, c.x + hw, c.y);
    g.stroke();
  }
}

function drawBrows(w, at) {
  const g = ctx;
  g.strokeStyle = COLORS.brow;
  g.lineWidth = 7;
  g.lineCap = "round";
  for (const [side, name] of [[1, "Left"], [-1, "Right"]]) {
    const down = w(`browDown${name}`);
    const inner = at(side * 22, -55 - w("browInnerUp") * 16 + down * 9);
    const outer = at(side * 80, -52 - w(`browOuterUp${name}`) * 16 + down * 6);
    g.beginPath();
    g.moveTo(inner.x, inner.y);
    g.quadraticCurveTo((inner.x + outer.x) / 2, Math.min(inner.y, outer.y) - 9, outer.x, outer.y);
    g.stroke();
  }
}

// The mouth from its corners and the lips' inner edges:
//   opening = jawOpen (less mouthClose, which keeps the lips together over an open jaw), plus the
//             lips' own movers (upper lip up, lower lip down, funnel), less press and roll;
//   width   = stretch and smile widen each side, pucker and funnel narrow it;
//   corners = smile raises, frown lowers; mouthLeft/Right and jawLeft/Right move the mouth;
//   shape   = funnel and pucker round it.
function drawMouth(w, at, sx, jaw, jawShift) {
  const g = ctx;
  const avg = (a, b) => (w(a) + w(b)) / 2;
  const funnel = w("mouthFunnel"), pucker = w("mouthPucker");
  const upperUp = avg("mouthUpperUpLeft", "mouthUpperUpRight") * 10 + funnel * 3;
  const lowerDown = Math.max(0, jaw - w("mouthClose")) * 70 + avg("mouthLowerDownLeft", "mouthLowerDownRight") * 12
                    + funnel * 5;
  const press = avg("mouthPressLeft", "mouthPressRight") * 6 + w("mouthRollLower") * 4 + w("mouthRollUpper") * 3;
  const up = Math.max(0, upperUp - press * 0.3), down = Math.max(0, lowerDown - press * 0.7);
  const m = at((w("mouthLeft") - w("mouthRight")) * 14 + jawShift * 0.5, MOUTH_Y + (down - up) * 0.15);
  const corner = (side, name) => {
    const spread = 1 + 0.30 * w(`mouthStretch${name}`) + 0.22 * w(`mouthSmile${name}`) + 0.08 * w(`mouthDimple${name}`)
                   - 0.38 * pucker - 0.22 * funnel;
    return {x: m.x + side * 40 * sx * spread,
            y: m.y - 9 * w(`mouthSmile${name}`) + 8 * w(`mouthFrown${name}`) + 0.25 * (down - up)};
  };
  const right = corner(-1, "Right"), left = corner(1, "Left");   // the face's own right is the viewer's left
  const round = clamp(0.9 * funnel + 0.6 * pucker, 0, 1);
  const reach = 0.5 - 0.3 * round;   // control points near the corners: a rounder mouth
  // a cubic's middle moves 3/4 of its control points' offset
  const curve = (from, to, dy) => g.bezierCurveTo(from.x + (m.x - from.x) * (1 - reach) * 0.9, m.y + dy / 0.75,
                                                  to.x + (m.x - to.x) * (1 - reach) * 0.9, m.y + dy / 0.75, to.x, to.y);
  const upperLip = 9 - w("mouthRollUpper") * 5 + pucker * 4 + w("mouthShrugUpper") * 2;
  const lowerLip = 12 - w("mouthRollLower") * 7 + pucker * 4 + w("mouthShrugLower") * 2;
  // lips: the outer edges
  g.beginPath();
  g.moveTo(right.x - 2, right.y);
  curve(right, left, -up - upperLip);
  curve(left, right, down + lowerLip);
  g.closePath();
  g.fillStyle = COLORS.lip;
  g.fill();
  if (up + down < 0.8) {   // closed: the line between the lips
    g.beginPath();
    g.moveTo(right.x, right.y);
    curve(right, left, (down - up) / 2);
    g.strokeStyle = COLORS.lipLine;
    g.lineWidth = 2;
    g.stroke();
    return;
  }
  const inside = () => {
    g.beginPath();
    g.moveTo(right.x, right.y);
    curve(right, left, -up);
    curve(left, right, down);
    g.closePath();
  };
  g.save();
  inside();
  g.fillStyle = COLORS.mouth;
  g.fill();
  g.clip();
  g.fillStyle = COLORS.teeth;   // upper teeth, behind the upper lip
  g.fillRect(m.x - 40, m.y - up - 4, 80, Math.min(7, 4 + (up + down) * 0.12));
  const tongue = w("tongueOut");
  g.fillStyle = COLORS.tongue;
  g.beginPath();
  g.ellipse(m.x, m.y + down + 3 - tongue * 12, 26 * sx, 9 + tongue * 8, 0, 0, 2 * Math.PI);
  g.fill();
  g.restore();
}

// --- the readout ------------------------------------------------------------------------------
function percentile(values, q) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function keep(list, value) {
  list.push(value);
  if (list.length > 2 * KEEP) list.splice(0, list.length - KEEP);
}

function moved(a, b) {
  for (let i = 0; i < a.bs.length; i++) if (Math.abs(a.bs[i] - b.bs[i]) > 0.005) return true;
  for (let i = 0; i < 3; i++) if (Math.abs(a.head[i] - b.head[i]) > 0.001) return true;
  return false;
}

let readoutAt = 0;

function readout(now, force = false) {
  if (now - readoutAt < 250 && !force) return;   // text four times a second is plenty to read
  readoutAt = now;
  const level = state.chosen === null ? undefined : state.levels.get(state.chosen);
  if (level) {
    ui.level.textContent = `${level.rms_dbfs.toFixed(0)} dBFS`;
    ui.meter.style.width = `${clamp((level.rms_dbfs + 60) / 60, 0, 1) * 100}%`;
  } else {
    ui.level.textContent = "–";
    ui.meter.style.width = "0";
  }
  const recent = (list) => list.slice(-120);
  const f = state.drawn;
  if (f && f.runtime_ms !== null) {
    const r = recent(hooks.runtimeLatencyMs).filter((ms) => ms !== null);
    ui.runtimeMs.textContent = `${f.runtime_ms.toFixed(0)} ms (p50 ${percentile(r, 0.5).toFixed(0)}, ` +
                               `p95 ${percentile(r, 0.95).toFixed(0)})`;
  }
  if (hooks.pageLatencyMs.length) {
    const p = recent(hooks.pageLatencyMs);
    ui.pageMs.textContent = `${p[p.length - 1].toFixed(1)} ms (p50 ${percentile(p, 0.5).toFixed(1)}, ` +
                            `p95 ${percentile(p, 0.95).toFixed(1)})`;
  }
  if (f) {
    ui.frame.textContent = `${f.stream} #${f.index}, t ${f.t_audio.toFixed(2)} s${f.last ? " (last)" : ""}`;
  } else {
    ui.frame.textContent = "–";
    ui.runtimeMs.textContent = "–";
  }
}

// --- the loop: draw the chosen stream's latest frame, once, when it is new ----------------------
// (an ended stream's last frame first); with no frame to show, the neutral face
function tick(now) {
  const frame = state.final ?? (state.chosen === null ? undefined : state.frames.get(state.chosen));
  state.final = null;
  let cleared = false;
  if (frame && frame !== state.drawn) {
    drawFace(frame);
    const drawnAt = performance.timeOrigin + performance.now();
    const pageMs = drawnAt - frame.sent * 1000;
    keep(hooks.pageLatencyMs, pageMs);
    keep(hooks.runtimeLatencyMs, frame.runtime_ms);   // null when unknown: the two lists stay aligned
    hooks.framesDrawn += 1;
    if (state.firstDrawn === null) {
      state.firstDrawn = frame;
      hooks.firstFrameMs = performance.now();
    } else if (hooks.firstMotionMs === null && moved(frame, state.firstDrawn)) {
      hooks.firstMotionMs = performance.now();
    }
    state.drawn = frame;
    hooks.lastDrawn = {stream: frame.stream, index: frame.index, t_audio: frame.t_audio, last: frame.last,
                       jawOpen: frame.bs[state.index.jawOpen], runtimeMs: frame.runtime_ms, pageMs};
    hooks.showing = {stream: frame.stream, index: frame.index};
  } else if (!frame && state.drawn !== null) {   // the stream ended, or a new serve has none: nothing to show
    drawFace(NEUTRAL);
    state.drawn = null;
    hooks.showing = null;
    cleared = true;
  }
  readout(now, cleared);
  requestAnimationFrame(tick);
}

drawFace(NEUTRAL);
connect();
requestAnimationFrame(tick);
