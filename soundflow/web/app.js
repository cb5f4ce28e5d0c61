// soundflow live page: microphone (AudioWorklet → 16 kHz f32le) or a file → WebSocket
// /v1/stream (protocol v1, see soundflow/server.py) → timeline of decisions + streamed replies.
"use strict";

const SR = 16000;
const FRAME = 1600; // 100 ms per binary frame
const MAX_CELLS = 1500; // 10 minutes of 400 ms chunks kept on screen
const MAX_INSTRUCTION_S = 20; // the server's max_instruction_audio_s

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), statusText: $("status-text"), mic: $("mic"), stop: $("stop"), file: $("file"),
  fileName: $("file-name"), pace: $("pace"), instruction: $("instruction"), setInstr: $("set-instruction"),
  speak: $("speak"), level: $("level"), timeline: $("timeline"), axis: $("axis"), replies: $("replies"),
  empty: $("replies-empty"), log: $("log"), chunks: $("stat-chunks"), responses: $("stat-responses"),
  latency: $("stat-latency"), heard: $("stat-heard"), session: $("stat-session"), threshold: $("legend-threshold"),
  source: $("source"), progress: $("progress"), record: $("record-instruction"), clearRec: $("clear-instruction"),
  spoken: $("spoken-instruction"),
};

// Public state, for people poking around in the console and for the browser test.
const sf = (window.soundflow = { state: "idle", decisions: 0, responses: 0, tokens: 0, errors: [], session: null,
  spokenInstruction: 0 /* seconds recorded, sent in the next session's hello */,
  spokenSent: 0 /* spoken instructions sent mid-session */ });
let spokenInstruction = null; // Float32Array, 16 kHz: the recorded instruction
let recording = null; // {stop()} while recording one

function setState(state, text) {
  sf.state = state;
  document.body.dataset.state = state;
  ui.status.className = "pill " + state;
  ui.statusText.textContent = text || state;
  const busy = state === "connecting" || state === "live";
  ui.mic.disabled = busy;
  ui.file.disabled = busy;
  ui.stop.disabled = !busy;
  if (recording) ui.mic.disabled = ui.file.disabled = true; // one capture at a time
  ui.record.disabled = state === "connecting"; // while live, a recording is sent to the session at once
  ui.mic.textContent = busy && ui.source.textContent === "microphone" ? "● Listening…" : "● Start microphone";
}

function log(msg, kind = "info") {
  const li = document.createElement("li");
  li.className = kind;
  const time = new Date().toLocaleTimeString();
  li.textContent = `${time}  ${msg}`;
  ui.log.prepend(li);
  while (ui.log.children.length > 50) ui.log.lastChild.remove();
}

// ---------------------------------------------------------------- colour scale for P(response)
const STOPS = [
  [0.0, [30, 41, 59]],
  [0.3, [22, 78, 99]],
  [0.5, [20, 150, 160]],
  [0.7, [234, 179, 8]],
  [1.0, [249, 97, 22]],
];
function colour(p) {
  p = Math.min(1, Math.max(0, p));
  for (let i = 1; i < STOPS.length; i++) {
    const [p1, c1] = STOPS[i];
    if (p <= p1) {
      const [p0, c0] = STOPS[i - 1];
      const f = (p - p0) / (p1 - p0);
      return `rgb(${c0.map((c, j) => Math.round(c + (c1[j] - c) * f)).join(",")})`;
    }
  }
  return `rgb(${STOPS[STOPS.length - 1][1].join(",")})`;
}

// ---------------------------------------------------------------- one WebSocket session
class Stream {
  constructor(label) {
    this.label = label;
    this.ready = false;
    this.closed = false;
    this.backlog = [];
    this.latencies = [];
    this.sentSamples = 0;
    const url = new URL("v1/stream", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    if (params.get("token")) url.searchParams.set("token", params.get("token"));
    this.ws = new WebSocket(url);
    this.ws.binaryType = "arraybuffer";
    this.ws.onopen = () => {
      const hello = { type: "hello", version: 1, sample_rate: SR, chunk_ms: 400, format: "f32le" };
      const instr = ui.instruction.value.trim();
      if (instr) hello.instruction = instr;
      const spoken = spokenInstruction;
      // a spoken instruction: announced in the hello, its samples follow as ordinary binary frames
      if (spoken) hello.instruction_audio = { samples: spoken.length };
      this.ws.send(JSON.stringify(hello));
      if (spoken) {
        this.sendSamples(spoken);
        log(`spoken instruction sent (${(spoken.length / SR).toFixed(1)} s)`);
      }
    };
    this.ws.onmessage = (e) => this.onEvent(JSON.parse(e.data));
    this.ws.onerror = () => log("connection error", "error");
    this.ws.onclose = (e) => {
      this.closed = true;
      if (sf.state === "live" || sf.state === "connecting") {
        setState(e.code === 1000 ? "done" : "error", e.code === 1000 ? "finished" : `closed (${e.code})`);
      }
      if (this.onclose) this.onclose();
    };
    setState("connecting", "connecting…");
  }

  sendPCM(pcm) {
    if (this.closed || this.ending) return;
    if (!this.ready) {
      this.backlog.push(pcm);
      return;
    }
    // the server refuses frames with |sample| > 2 and clips the rest; clip here so a hot file
    // (decoded float audio can exceed full scale) is never refused
    let hot = false;
    for (let i = 0; i < pcm.length; i++) if (pcm[i] > 1 || pcm[i] < -1) { hot = true; break; }
    if (hot) pcm = pcm.map((x) => Math.max(-1, Math.min(1, x)));
    this.ws.send(pcm.buffer.byteLength === pcm.byteLength ? pcm.buffer : pcm.slice().buffer);
    this.sentSamples += pcm.length;
    ui.heard.textContent = (this.sentSamples / SR).toFixed(1) + " s";
  }

  setInstruction(text) {
    if (this.ready && !this.closed) this.ws.send(JSON.stringify({ type: "instruction", text }));
  }

  // A spoken instruction mid-session: announced, then its samples as binary frames, all in one
  // go (nothing of the stream can come between them); with the text box's text, as a hello has.
  // False when the session cannot take it (not ready yet, ending, closed).
  sendInstructionAudio(pcm, text) {
    if (!this.ready || this.closed || this.ending) return false;
    const msg = { type: "instruction", audio: { samples: pcm.length } };
    if (text) msg.text = text;
    this.ws.send(JSON.stringify(msg));
    this.sendSamples(pcm);
    return true;
  }

  // instruction samples as FRAME-sample binary frames, clipped to [-1, 1] (the hello's and a
  // mid-session one alike)
  sendSamples(pcm) {
    for (let i = 0; i < pcm.length; i += FRAME) {
      this.ws.send(pcm.slice(i, i + FRAME).map((x) => Math.max(-1, Math.min(1, x))).buffer);
    }
  }

  end() {
    if (this.closed || this.ending) return;
    this.ending = true;
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "end" }));
    else this.ws.close();
  }

  onEvent(ev) {
    switch (ev.type) {
      case "ready":
        this.ready = true;
        sf.session = ev.session;
        ui.session.textContent = ev.session;
        if (typeof ev.threshold === "number") {
          ui.threshold.style.left = `${ev.threshold * 100}%`;
          ui.threshold.title = `threshold ${ev.threshold}`;
          ui.threshold.hidden = false;
        }
        setState("live", this.label);
        log(`session ${ev.session} ready (${this.label})`);
        for (const pcm of this.backlog.splice(0)) this.sendPCM(pcm);
        break;
      case "decision":
        addDecision(ev);
        if (!ev.drained) this.latencies.push(ev.latency_ms);
        ui.latency.textContent = median(this.latencies).toFixed(0) + " ms";
        break;
      case "token":
        sf.tokens++;
        replyCard(ev.chunk, ev.t).append(ev.text);
        break;
      case "response":
        finishReply(ev);
        break;
      case "error":
        sf.errors.push(ev);
        log(`${ev.code || "error"}: ${ev.message}`, "error");
        if (!this.ready) setState("error", ev.code || "error");
        break;
      case "end":
        log(`stream finished: ${ev.chunks} chunks`);
        setState("done", "finished");
        break;
    }
  }
}

function median(xs) {
  if (!xs.length) return NaN;
  const s = xs.slice(-50).sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

// ---------------------------------------------------------------- timeline and replies
function addDecision(ev) {
  sf.decisions++;
  const cell = document.createElement("div");
  cell.className = "cell" + (ev.decision === "response" ? " respond" : "") + (ev.drained ? " drained" : "");
  cell.style.setProperty("--c", colour(ev.p_response));
  cell.style.setProperty("--h", `${Math.max(6, ev.p_response * 100)}%`);
  cell.dataset.chunk = ev.chunk;
  cell.title = `chunk ${ev.chunk} · ${ev.t.toFixed(1)} s\nP(response) = ${ev.p_response.toFixed(3)}\n` +
    `${ev.decision}${ev.drained ? " (drained while busy)" : ""} · ${ev.latency_ms.toFixed(0)} ms`;
  ui.timeline.append(cell);
  if (ev.chunk % 10 === 9) {
    const tick = document.createElement("span");
    tick.className = "tick";
    tick.textContent = `${ev.t.toFixed(0)} s`;
    cell.append(tick);
  }
  while (ui.timeline.children.length > MAX_CELLS) ui.timeline.firstChild.remove();
  ui.timeline.scrollLeft = ui.timeline.scrollWidth;
  ui.chunks.textContent = sf.decisions;
}

const cards = new Map();
function replyCard(chunk, t) {
  let card = cards.get(chunk);
  if (card) return card;
  ui.empty.hidden = true;
  const li = document.createElement("li");
  li.className = "reply streaming";
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = t !== undefined ? `${t.toFixed(1)} s · chunk ${chunk}` : `chunk ${chunk}`;
  const text = document.createElement("div");
  text.className = "text";
  li.append(meta, text);
  ui.replies.prepend(li);
  while (ui.replies.children.length > 200) ui.replies.lastChild.remove();
  card = {
    li, meta, text,
    append(s) { text.textContent += s; },
  };
  cards.set(chunk, card);
  const cell = ui.timeline.querySelector(`.cell[data-chunk="${chunk}"]`);
  if (cell) cell.classList.add("respond");
  return card;
}

function finishReply(ev) {
  sf.responses++;
  ui.responses.textContent = sf.responses;
  const card = replyCard(ev.chunk, ev.t);
  card.meta.textContent = `${ev.t.toFixed(1)} s · chunk ${ev.chunk}${ev.cut ? ` · cut (${ev.cut})` : ""}`;
  card.text.textContent = ev.text;
  card.li.classList.remove("streaming");
  cards.delete(ev.chunk);
  if (ui.speak.checked && ev.text.trim() && "speechSynthesis" in window) {
    const u = new SpeechSynthesisUtterance(ev.text);
    u.rate = 1.05;
    speechSynthesis.speak(u);
  }
}

function resetView() {
  ui.timeline.replaceChildren();
  ui.replies.replaceChildren();
  cards.clear();
  ui.empty.hidden = false;
  for (const el of [ui.chunks, ui.responses]) el.textContent = "0";
  ui.latency.textContent = "–";
  ui.heard.textContent = "0.0 s";
  ui.session.textContent = "–";
  ui.progress.style.width = "0";
  Object.assign(sf, { decisions: 0, responses: 0, tokens: 0, errors: [], session: null });
}

// ---------------------------------------------------------------- microphone
let current = null; // {stream: Stream, stop()}

// The microphone through the downsampling worklet (16 kHz float32 frames on node.port), or
// null (logged) when the browser gives none; the stream and the spoken instruction share it.
async function openCapture() {
  let media, ctx;
  try {
    media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    });
    ctx = new AudioContext();
    await ctx.audioWorklet.addModule("static/worklet.js");
  } catch (e) {
    log(`microphone unavailable: ${e.message || e}`, "error");
    if (media) media.getTracks().forEach((t) => t.stop());
    return null;
  }
  const src = ctx.createMediaStreamSource(media);
  const node = new AudioWorkletNode(ctx, "soundflow-downsampler", { processorOptions: { frameSamples: FRAME } });
  const mute = ctx.createGain();
  mute.gain.value = 0; // keep the graph pulled without echoing the mic to the speakers
  src.connect(node).connect(mute).connect(ctx.destination);
  return { media, ctx, node };
}

async function startMic() {
  resetView();
  ui.source.textContent = "microphone";
  const cap = await openCapture();
  if (!cap) {
    setState("error", "no microphone");
    return;
  }
  const { media, ctx, node } = cap;
  const stream = new Stream(`microphone · ${ctx.sampleRate / 1000} kHz → 16 kHz`);
  node.port.onmessage = (e) => {
    if (recording && recording.fromStream) return recording.take(e.data); // the stream pauses meanwhile
    stream.sendPCM(e.data.pcm);
    meter(e.data.rms);
  };
  if (ctx.state !== "running") {
    try { await ctx.resume(); } catch (_) { /* needs a click */ }
    if (ctx.state !== "running") log("audio is paused by the browser: click anywhere to start", "error");
    document.addEventListener("click", () => ctx.resume(), { once: true });
  }
  let stopped = false;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    node.port.postMessage("stop");
    media.getTracks().forEach((t) => t.stop());
    ctx.close().catch(() => {});
    meter(0);
  };
  stream.onclose = stop;
  current = { stream, mic: true, stop: () => { stream.end(); stop(); } };
}

// ---------------------------------------------------------------- spoken instruction
// Recorded through the same capture path as the stream (getUserMedia → the downsampling
// worklet → 16 kHz float32 frames) and kept here: sent with each new session's hello, and,
// when a session is running, sent to it at once (a mid-session instruction). During a
// microphone session the recording takes the session's own capture: its frames are the
// instruction instead of stream audio until the recording stops.
async function recordInstruction() {
  if (recording) {
    recording.stop();
    return;
  }
  const shared = current && current.mic && !current.stream.closed;
  const cap = shared ? null : await openCapture();
  if (!shared && !cap) return;
  const frames = [];
  let n = 0;
  const max = MAX_INSTRUCTION_S * SR;
  const take = (data) => {
    if (!recording) return;
    frames.push(data.pcm);
    n += data.pcm.length;
    meter(data.rms);
    ui.spoken.textContent = `Recording… ${(n / SR).toFixed(1)} s (click Stop when done)`;
    if (n >= max) recording.stop();
  };
  if (cap) {
    cap.node.port.onmessage = (e) => take(e.data);
    if (cap.ctx.state !== "running") {
      try { await cap.ctx.resume(); } catch (_) { /* needs a click */ }
    }
  }
  recording = {
    fromStream: shared,
    take,
    stop: () => {
      recording = null;
      if (cap) {
        cap.node.port.postMessage("stop");
        cap.media.getTracks().forEach((t) => t.stop());
        cap.ctx.close().catch(() => {});
      }
      meter(0);
      const x = new Float32Array(Math.min(n, max));
      let o = 0;
      for (const f of frames) {
        if (o >= x.length) break;
        x.set(f.subarray(0, x.length - o), o);
        o += f.length;
      }
      spokenInstruction = x.length ? x : null;
      const secs = (x.length / SR).toFixed(1);
      if (spokenInstruction && current && current.stream.sendInstructionAudio(x, ui.instruction.value.trim())) {
        sf.spokenSent++;
        log(`spoken instruction (${secs} s) sent to the running session; new sessions start with it too`);
      } else {
        log(spokenInstruction ? `spoken instruction recorded (${secs} s); it is heard when the next session starts`
          : "nothing recorded");
      }
      showSpoken();
    },
  };
  log(shared ? "recording a spoken instruction (the stream pauses until you stop)…" : "recording a spoken instruction…");
  showSpoken();
}

function showSpoken() {
  const secs = spokenInstruction ? spokenInstruction.length / SR : 0;
  sf.spokenInstruction = secs;
  ui.record.textContent = recording ? "■ Stop recording" : secs ? "🎙 Record again" : "🎙 Record spoken instruction";
  ui.record.classList.toggle("recording", !!recording);
  ui.clearRec.hidden = !secs || !!recording;
  if (!recording) {
    ui.spoken.textContent = secs ? `Spoken instruction: ${secs.toFixed(1)} s, heard before the stream of each new session (recorded during one: sent to it at once).`
      : "Or say it: a recorded instruction (up to 20 s) is heard before the stream, as the paper's audio instructions are.";
  }
  setState(sf.state, ui.statusText.textContent);
}

function meter(rms) {
  const db = rms > 0 ? 20 * Math.log10(rms) : -100;
  ui.level.style.width = `${Math.min(100, Math.max(0, (db + 60) / 60 * 100))}%`;
}

// ---------------------------------------------------------------- file upload
async function streamFile(file) {
  resetView();
  ui.fileName.textContent = file.name;
  ui.source.textContent = file.name;
  let pcm, decoded;
  try {
    const bytes = await file.arrayBuffer();
    const dec = new AudioContext();
    decoded = await dec.decodeAudioData(bytes);
    dec.close();
    const off = new OfflineAudioContext(1, Math.max(1, Math.ceil(decoded.duration * SR)), SR);
    const src = off.createBufferSource();
    src.buffer = decoded;
    src.connect(off.destination); // 1-channel destination: the browser downmixes
    src.start();
    pcm = (await off.startRendering()).getChannelData(0);
  } catch (e) {
    log(`cannot decode ${file.name}: ${e.message || e}`, "error");
    setState("error", "cannot decode");
    return;
  }
  const realtime = ui.pace.value === "realtime";
  const stream = new Stream(`${file.name} · ${realtime ? "real time" : "fast"}`);
  let cancelled = false;
  let player = null;
  const stopPlayer = () => {
    if (player) player.close().catch(() => {});
    player = null;
  };
  stream.onclose = stopPlayer;
  current = {
    stream,
    stop: () => {
      cancelled = true;
      stopPlayer();
      stream.end();
    },
  };
  log(`${file.name}: ${decoded.duration.toFixed(1)} s, ${decoded.numberOfChannels} ch → 16 kHz mono`);
  while (!stream.ready && !stream.closed) await sleep(20);
  if (stream.closed) return;
  if (realtime) {
    // play it along so you hear what the model hears
    player = new AudioContext();
    const src = player.createBufferSource();
    src.buffer = decoded;
    src.connect(player.destination);
    src.start();
  }
  const t0 = performance.now();
  for (let i = 0; i < pcm.length && !cancelled && !stream.closed; i += FRAME) {
    const frame = pcm.slice(i, i + FRAME);
    if (realtime) {
      const due = t0 + ((i + frame.length) / SR) * 1000;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
    } else {
      while (stream.ws.bufferedAmount > 1 << 20 && !stream.closed) await sleep(20); // the server paces us
    }
    stream.sendPCM(frame);
    meter(Math.sqrt(frame.reduce((a, x) => a + x * x, 0) / frame.length));
    ui.progress.style.width = `${Math.min(100, ((i + frame.length) / pcm.length) * 100)}%`;
  }
  meter(0);
  if (!cancelled) stream.end();
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- wiring
ui.mic.onclick = () => startMic();
ui.stop.onclick = () => {
  if (current) current.stop();
};
ui.file.onchange = () => {
  if (ui.file.files.length) streamFile(ui.file.files[0]);
  ui.file.value = "";
};
ui.setInstr.onclick = () => {
  const text = ui.instruction.value.trim();
  if (current && !current.stream.closed) {
    current.stream.setInstruction(text);
    log(`instruction set: ${text || "(none)"}`);
  } else {
    log("the instruction will be sent with the next session");
  }
};
ui.record.onclick = () => recordInstruction();
ui.clearRec.onclick = () => {
  spokenInstruction = null;
  log("spoken instruction cleared");
  showSpoken();
};
ui.instruction.onkeydown = (e) => {
  if (e.key === "Enter") ui.setInstr.click();
};
ui.speak.checked = localStorage.getItem("soundflow.speak") === "1";
ui.speak.onchange = () => {
  localStorage.setItem("soundflow.speak", ui.speak.checked ? "1" : "0");
  if (!ui.speak.checked && "speechSynthesis" in window) speechSynthesis.cancel();
};
if (!("speechSynthesis" in window)) {
  ui.speak.disabled = true;
  ui.speak.parentElement.title = "this browser has no speech synthesis";
}
if (params.get("instruction")) ui.instruction.value = params.get("instruction");

setState("idle", "idle");
if (!window.isSecureContext) log("the microphone needs https or localhost; file upload still works", "error");
if (params.get("autostart") === "1") startMic();
