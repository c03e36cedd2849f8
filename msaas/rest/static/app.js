// MSaaS page: upload, follow the job, then mix its stems with Web Audio (one clock for every stem, so they stay in sync).
"use strict";

const $ = (id) => document.getElementById(id);
const RECENT = "msaas.recent";
const KEY = "msaas.key"; // the API key, when the server wants one: kept in this browser, sent with every request

const withKey = (options = {}) => {
  const key = localStorage.getItem(KEY);
  return key ? { ...options, headers: { ...options.headers, Authorization: `Bearer ${key}` } } : options;
};
const fetchWithKey = (path, options) => fetch(path, withKey(options)).then((r) => {
  if (r.status === 401) askForKey();
  return r;
});
const api = (path, options) => fetchWithKey(path, options).then(async (r) => {
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : null;
  if (!r.ok) throw new Error(body?.error || `HTTP ${r.status}`);
  return body;
});

// ---- the API key ----------------------------------------------------------------------------
function askForKey() {
  $("keybox").hidden = false;
  $("key").focus();
}

function saveKey(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  localStorage.setItem(KEY, key);
  $("key").value = "";
  $("keybox").hidden = true;
  say("");
  $("model").replaceChildren();
  loadModels().catch((err) => say(err.message, true));
}

// A link the browser follows itself sends no header: with a key, download through fetch and hand over the bytes.
async function download(url, name) {
  const r = await fetchWithKey(url);
  if (!r.ok) return say(`download failed: HTTP ${r.status}`, true);
  const link = Object.assign(document.createElement("a"), { href: URL.createObjectURL(await r.blob()), download: name });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

function keyedLink(link, url, name) {
  link.href = url;
  link.onclick = (e) => {
    if (!localStorage.getItem(KEY)) return; // no key: the browser downloads it as any link
    e.preventDefault();
    download(url, name);
  };
}

// ---- upload ---------------------------------------------------------------------------------
let chosen = null;

function choose(file) {
  chosen = file;
  $("send").disabled = !file;
  say(file ? `${file.name} (${(file.size / 1e6).toFixed(1)} MB)` : "");
}

function clock(seconds) {
  const s = Math.round(seconds);
  return s >= 60 ? `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}` : `${s} s`;
}

function say(text, error = false) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

async function loadModels() {
  const { default: preferred, models } = await api("/apiv1/models");
  const select = $("model");
  for (const m of models) {
    const option = new Option(`${m.name}${m.tracks ? ` (${m.tracks.join(", ")})` : ""}${m.available ? "" : " (weights missing)"}`, m.name);
    option.title = [m.about, m.engine && `engine: ${m.engine}`, m.license && `weights: ${m.license}`].filter(Boolean).join(" · ");
    option.disabled = !m.available;
    option.selected = m.name === preferred;
    select.append(option);
  }
}

async function send() {
  if (!chosen) return;
  const form = new FormData();
  form.append("mp3", chosen);
  form.append("model", $("model").value);
  if ($("karaoke").checked) form.append("two_stems", "vocals");
  $("send").disabled = true;
  say("Uploading…");
  try {
    const { hash, reason } = await api("/apiv1/separate", { method: "POST", body: form });
    say(reason);
    remember(hash, chosen.name);
    follow(hash, chosen.name);
  } catch (err) {
    say(err.message, true);
  } finally {
    $("send").disabled = !chosen;
  }
}

// ---- recent songs ---------------------------------------------------------------------------
function recent() {
  try { return JSON.parse(localStorage.getItem(RECENT)) || []; } catch { return []; }
}

function remember(hash, name) {
  const list = [{ hash, name }, ...recent().filter((s) => s.hash !== hash)].slice(0, 10);
  localStorage.setItem(RECENT, JSON.stringify(list));
  showRecent();
}

function showRecent() {
  const ul = $("recent-list");
  ul.replaceChildren(...recent().map(({ hash, name }) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.textContent = name;
    a.onclick = () => follow(hash, name);
    li.append(a);
    return li;
  }));
}

// ---- following a job ------------------------------------------------------------------------
let following = null;

async function follow(hash, name) {
  following = hash;
  mixer.unload();
  $("job").hidden = false;
  $("mixer").hidden = true;
  $("title").textContent = name;
  while (following === hash) {
    let status;
    try {
      status = await api(`/apiv1/status/${hash}`);
    } catch (err) {
      $("stage").textContent = err.message;
      return;
    }
    const waiting = status.queue_position != null ? ` (${status.queue_position} ahead)` : "";
    const left = status.eta_s != null ? `, about ${clock(status.eta_s)} left` : "";
    $("stage").textContent = (status.state === "running" ? status.stage : status.state) + waiting + left;
    $("progress").value = status.progress;
    $("percent").textContent = `${Math.round(status.progress * 100)}%`;
    if (status.state === "done") return mixer.load(hash, status);
    if (status.state === "failed") return say(status.error || "separation failed", true);
    await new Promise((resolve) => setTimeout(resolve, 700));
  }
}

// ---- the mixer ------------------------------------------------------------------------------
const mixer = {
  ctx: null, master: null, stems: [], started: 0, offset: 0, playing: false, duration: 0,

  unload() {
    this.stop();
    this.stems = [];
    $("stems").tBodies[0].replaceChildren();
  },

  async load(hash, status) {
    this.ctx = this.ctx || new AudioContext();
    if (!this.master) {
      this.master = this.ctx.createGain();
      this.analyser = this.ctx.createAnalyser(); // what comes out, for the level meter of tests and the curious
      this.master.connect(this.ctx.destination);
      this.master.connect(this.analyser);
    }
    const ext = status.options?.format || "mp3";
    keyedLink($("zip"), `/apiv1/zip/${hash}`, `${hash.slice(0, 12)}-stems.zip`);
    this.hash = hash;
    $("karaoke-mix").hidden = !status.tracks.includes("vocals");
    keyedLink($("karaoke-mix"), `/apiv1/mix/${hash}?vocals=0`, `${hash.slice(0, 12)}-karaoke.${ext}`);
    this.stems = await Promise.all(status.tracks.map(async (track) => {
      const url = `/apiv1/track/${hash}/${track}`;
      const data = await fetchWithKey(url).then((r) => r.arrayBuffer());
      const buffer = await this.ctx.decodeAudioData(data);
      const gain = this.ctx.createGain();
      gain.connect(this.master);
      return { track, url, ext, buffer, gain, volume: 1, muted: false, solo: false, source: null };
    }));
    this.duration = Math.max(...this.stems.map((s) => s.buffer.duration));
    this.offset = 0;
    this.render();
    this.apply();
    $("mixer").hidden = false;
  },

  render() {
    const rows = this.stems.map((stem) => {
      const tr = document.createElement("tr");
      tr.dataset.track = stem.track;
      const button = (label, key) => {
        const b = document.createElement("button");
        b.textContent = label;
        b.className = key;
        b.onclick = () => { stem[key] = !stem[key]; b.classList.toggle("on", stem[key]); this.apply(); };
        return b;
      };
      const volume = Object.assign(document.createElement("input"), { type: "range", min: 0, max: 1.5, step: 0.01, value: 1, className: "volume" });
      volume.oninput = () => { stem.volume = Number(volume.value); this.apply(); };
      const link = Object.assign(document.createElement("a"), { textContent: "download", download: `${stem.track}.${stem.ext}` });
      keyedLink(link, stem.url, `${stem.track}.${stem.ext}`);
      const cells = [stem.track, button("Mute", "muted"), button("Solo", "solo"), volume, link].map((content) => {
        const td = document.createElement("td");
        if (typeof content === "string") { td.textContent = content; td.className = "name"; } else td.append(content);
        return td;
      });
      tr.append(...cells);
      return tr;
    });
    $("stems").tBodies[0].replaceChildren(...rows);
  },

  // What each stem should be heard at: solo wins over mute, volume scales what is heard.
  levels() {
    const soloing = this.stems.some((s) => s.solo);
    return Object.fromEntries(this.stems.map((s) => [s.track, (soloing ? s.solo : !s.muted) ? s.volume : 0]));
  },

  apply() {
    const levels = this.levels();
    for (const stem of this.stems) stem.gain.gain.value = levels[stem.track]; // takes effect at once (no scheduled event)
    // what is heard, as one file from the server: the same gains (only those that are not 1)
    const changed = Object.entries(levels).filter(([, level]) => level !== 1);
    const query = new URLSearchParams(changed.map(([track, level]) => [track, String(level)]));
    const ext = this.stems[0]?.ext || "mp3";
    keyedLink($("export"), `/apiv1/mix/${this.hash}${changed.length ? `?${query}` : ""}`, `${this.hash.slice(0, 12)}-mix.${ext}`);
  },

  position() {
    return this.playing ? Math.min(this.duration, this.ctx.currentTime - this.started) : this.offset;
  },

  play() {
    if (this.playing || !this.stems.length) return;
    this.ctx.resume();
    const at = this.ctx.currentTime + 0.05;
    const sources = this.start(this.ctx, this.stems.map((s) => s.gain), at, this.offset);
    this.stems.forEach((stem, i) => { stem.source = sources[i]; });
    this.started = at - this.offset;
    this.playing = true;
    $("play").textContent = "Pause";
  },

  // Every stem's source into its gain, all started at one instant `at`: they cannot drift apart.
  start(ctx, gains, at, offset) {
    return this.stems.map((stem, i) => {
      const source = ctx.createBufferSource();
      source.buffer = stem.buffer;
      source.connect(gains[i]);
      source.start(at, offset);
      return source;
    });
  },

  // The level coming out now (RMS of the last block the analyser saw).
  heard() {
    if (!this.analyser) return 0;
    const block = new Float32Array(this.analyser.fftSize);
    this.analyser.getFloatTimeDomainData(block);
    return Math.sqrt(block.reduce((sum, x) => sum + x * x, 0) / block.length);
  },

  // What the mixer plays from the current position with the current levels, rendered offline by the same graph.
  async bounce(seconds) {
    const rate = this.stems[0].buffer.sampleRate;
    const ctx = new OfflineAudioContext(2, Math.round(seconds * rate), rate);
    const levels = this.levels();
    const gains = this.stems.map((stem) => {
      const gain = ctx.createGain();
      gain.gain.value = levels[stem.track];
      gain.connect(ctx.destination);
      return gain;
    });
    this.start(ctx, gains, 0, this.offset);
    const out = await ctx.startRendering();
    return [out.getChannelData(0), out.getChannelData(1)];
  },

  pause() {
    if (!this.playing) return;
    this.offset = this.position();
    this.halt();
  },

  stop() {
    this.halt();
    this.offset = 0;
  },

  halt() {
    for (const stem of this.stems) { try { stem.source?.stop(); } catch {} stem.source = null; }
    this.playing = false;
    $("play").textContent = "Play";
  },

  seek(fraction) {
    const resume = this.playing;
    this.halt();
    this.offset = fraction * this.duration;
    if (resume) this.play();
  },
};
window.msaasMixer = mixer; // for tests and the curious: levels(), position(), stems

function tick() {
  if (mixer.stems.length) {
    const at = mixer.position();
    if (mixer.playing && at >= mixer.duration) mixer.stop();
    $("seek").value = mixer.duration ? at / mixer.duration : 0;
    $("time").textContent = `${Math.floor(at / 60)}:${String(Math.floor(at % 60)).padStart(2, "0")}`;
  }
  requestAnimationFrame(tick);
}

// ---- wiring ---------------------------------------------------------------------------------
$("file").onchange = (e) => choose(e.target.files[0]);
$("drop").ondragover = (e) => { e.preventDefault(); $("drop").classList.add("over"); };
$("drop").ondragleave = () => $("drop").classList.remove("over");
$("drop").ondrop = (e) => { e.preventDefault(); $("drop").classList.remove("over"); choose(e.dataTransfer.files[0]); };
$("send").onclick = send;
$("keybox").onsubmit = saveKey;
$("play").onclick = () => (mixer.playing ? mixer.pause() : mixer.play());
$("stop").onclick = () => mixer.stop();
$("seek").oninput = (e) => mixer.seek(Number(e.target.value));
loadModels().catch((err) => say(err.message, true));
showRecent();
tick();
