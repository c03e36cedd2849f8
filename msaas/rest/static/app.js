// MSaaS page: upload (a file or a link), follow the job, then mix its stems with Web Audio (one clock for every stem, so
// they stay in sync) over their waveforms; the library lists the songs the server keeps for this key.
"use strict";

const $ = (id) => document.getElementById(id);
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
  library.show();
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
  if (file) $("link").value = "";
  ready();
  say(file ? `${file.name} (${(file.size / 1e6).toFixed(1)} MB)` : "");
}

// A file, or else a link: whichever was given last.
function ready() {
  $("send").disabled = !chosen && !$("link").value.trim();
}

function clock(seconds) {
  const s = Math.round(seconds);
  return s >= 60 ? `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}` : `${s} s`;
}

// 0:07, 3:04: the mixer's clock
function mmss(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
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

async function send(event) {
  event?.preventDefault();
  const link = $("link").value.trim();
  if (!chosen && !link) return;
  const form = new FormData();
  if (chosen) form.append("mp3", chosen);
  else form.append("url", link);
  form.append("model", $("model").value);
  if ($("format").value !== "mp3") form.append("format", $("format").value);
  if ($("karaoke").checked) form.append("two_stems", "vocals");
  const name = chosen ? chosen.name : decodeURIComponent(new URL(link, location.href).pathname.split("/").pop() || link);
  $("send").disabled = true;
  say(chosen ? "Uploading…" : "Fetching the link…");
  try {
    const { hash, reason } = await api("/apiv1/separate", { method: "POST", body: form });
    say(reason);
    follow(hash, name);
    library.show();
  } catch (err) {
    say(err.message, true);
  } finally {
    ready();
  }
}

// ---- the library: the songs the server keeps for this key -------------------------------------
const PAGE = 20;
const library = {
  shown: 0,

  // The first page (again), or the next one after those shown (`more`).
  async show(more = false) {
    const offset = more ? this.shown : 0;
    let page;
    try {
      page = await api(`/apiv1/songs?limit=${PAGE}&offset=${offset}`);
    } catch (err) {
      return; // no key yet, or the server is busy: the list stays as it was
    }
    const items = page.songs.map((song) => this.item(song));
    if (more) $("songs").append(...items);
    else $("songs").replaceChildren(...items);
    this.shown = offset + page.songs.length;
    $("more").hidden = page.next == null;
    $("songs-empty").hidden = page.total > 0;
  },

  item(song) {
    const li = document.createElement("li");
    li.dataset.hash = song.hash;
    const name = song.name || `song ${song.hash.slice(0, 8)}`;
    const open = Object.assign(document.createElement("button"), { className: "open", textContent: name });
    open.onclick = () => follow(song.hash, name);
    const when = new Date(song.created * 1000).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
    const meta = Object.assign(document.createElement("span"), {
      className: "meta",
      textContent: [song.model, song.duration_s != null ? mmss(song.duration_s) : null, song.state, when].filter(Boolean).join(" · "),
    });
    const remove = Object.assign(document.createElement("button"), { className: "delete", textContent: "Delete" });
    remove.setAttribute("aria-label", `Delete ${name}`);
    remove.onclick = () => this.remove(song.hash, name);
    li.append(open, meta, remove);
    return li;
  },

  async remove(hash, name) {
    if (!confirm(`Delete "${name}" and its stems from the server?`)) return;
    try {
      await api(`/apiv1/song/${hash}`, { method: "DELETE" });
    } catch (err) {
      return say(err.message, true);
    }
    if (following === hash) {
      following = null;
      mixer.unload();
      $("job").hidden = true;
    }
    say(`Deleted ${name}.`);
    await this.show();
    $("library-title").focus();
  },
};

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
    // the live region says the stage (and the place in the queue) when it changes; the time left is shown beside it
    const waiting = status.queue_position != null ? ` (${status.queue_position} ahead)` : "";
    const stage = (status.state === "running" ? status.stage : status.state) + waiting;
    if ($("stage").textContent !== stage) $("stage").textContent = stage;
    $("eta").textContent = status.eta_s != null ? `about ${clock(status.eta_s)} left` : "";
    $("progress").value = status.progress;
    $("percent").textContent = `${Math.round(status.progress * 100)}%`;
    if (status.state === "done") {
      library.show();
      await mixer.load(hash, status);
      $("stage").textContent = "done: the stems are ready to play";
      return;
    }
    if (status.state === "failed") {
      library.show();
      return say(status.error || "separation failed", true);
    }
    await new Promise((resolve) => setTimeout(resolve, 700));
  }
}

// ---- the mixer ------------------------------------------------------------------------------
const mixer = {
  ctx: null, master: null, stems: [], started: 0, offset: 0, playing: false, duration: 0,

  unload() {
    this.stop();
    this.stems = [];
    $("stems").replaceChildren();
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
      const [data, peaks] = await Promise.all([
        fetchWithKey(url).then((r) => r.arrayBuffer()),
        api(`/apiv1/peaks/${hash}/${track}`).catch(() => null), // songs separated before peaks were kept have none
      ]);
      const buffer = await this.ctx.decodeAudioData(data);
      const gain = this.ctx.createGain();
      gain.connect(this.master);
      const stem = { track, url, ext, buffer, gain, volume: 1, muted: false, solo: false, source: null };
      stem.peaks = peaks || peaksOf(buffer);
      stem.peaksFrom = peaks ? "server" : "browser";
      return stem;
    }));
    this.duration = Math.max(...this.stems.map((s) => s.buffer.duration));
    this.offset = 0;
    $("mixer").hidden = false; // shown before drawing: a hidden canvas has no size
    this.render();
    this.apply();
  },

  render() {
    const rows = this.stems.map((stem) => {
      const li = document.createElement("li");
      li.className = "stem";
      li.dataset.track = stem.track;
      const button = (label, key) => {
        const b = document.createElement("button");
        b.textContent = label;
        b.className = key;
        b.setAttribute("aria-pressed", "false");
        b.setAttribute("aria-label", `${label} ${stem.track}`);
        b.onclick = () => {
          stem[key] = !stem[key];
          b.classList.toggle("on", stem[key]);
          b.setAttribute("aria-pressed", String(stem[key]));
          this.apply();
        };
        return b;
      };
      const name = Object.assign(document.createElement("span"), { className: "name", textContent: stem.track });
      const wave = document.createElement("div");
      wave.className = "wave";
      const canvas = document.createElement("canvas");
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", `waveform of ${stem.track}`);
      wave.append(canvas, Object.assign(document.createElement("div"), { className: "played" }),
        Object.assign(document.createElement("div"), { className: "playhead" }));
      seekable(wave);
      stem.canvas = canvas;
      const volume = Object.assign(document.createElement("input"), { type: "range", min: 0, max: 1.5, step: 0.01, value: 1, className: "volume" });
      volume.setAttribute("aria-label", `${stem.track} volume`);
      volume.oninput = () => { stem.volume = Number(volume.value); this.apply(); };
      const link = Object.assign(document.createElement("a"), { textContent: "download", download: `${stem.track}.${stem.ext}` });
      link.setAttribute("aria-label", `download ${stem.track}`);
      keyedLink(link, stem.url, `${stem.track}.${stem.ext}`);
      const controls = document.createElement("div");
      controls.className = "controls";
      controls.append(button("Mute", "muted"), button("Solo", "solo"), volume, link);
      li.append(name, wave, controls);
      return li;
    });
    $("stems").replaceChildren(...rows);
    this.draw();
  },

  // Every waveform at the canvas's size, on one scale (the loudest peak of any stem), so that quiet stems look quiet.
  draw() {
    const top = Math.max(1, ...this.stems.map((s) => s.peaks.peaks.reduce((m, v) => Math.max(m, v), 0)));
    for (const stem of this.stems) drawWave(stem.canvas, stem.peaks, top);
  },

  // What each stem should be heard at: solo wins over mute, volume scales what is heard.
  levels() {
    const soloing = this.stems.some((s) => s.solo);
    return Object.fromEntries(this.stems.map((s) => [s.track, (soloing ? s.solo : !s.muted) ? s.volume : 0]));
  },

  apply() {
    const levels = this.levels();
    for (const stem of this.stems) {
      stem.gain.gain.value = levels[stem.track]; // takes effect at once (no scheduled event)
      stem.canvas?.closest(".stem").classList.toggle("silent", levels[stem.track] === 0);
    }
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

// ---- waveforms --------------------------------------------------------------------------------
const PEAKS_PER_S = 50; // as the server's (msaas/peaks.py)

// The server's form of peaks, from a decoded stem: for songs separated before the server kept them.
function peaksOf(buffer) {
  const span = Math.max(1, Math.floor(buffer.sampleRate / PEAKS_PER_S));
  const channels = [...Array(buffer.numberOfChannels).keys()].map((c) => buffer.getChannelData(c));
  const peaks = [];
  for (let at = 0; at < buffer.length; at += span) {
    let loudest = 0;
    for (const data of channels) for (let i = at; i < Math.min(at + span, buffer.length); i++) loudest = Math.max(loudest, Math.abs(data[i]));
    peaks.push(Math.ceil(Math.min(1, loudest) * 255));
  }
  return { rate: buffer.sampleRate, samples: buffer.length, span, scale: 255, peaks };
}

// Peaks drawn as a mirrored bar per pixel column (the loudest peak it covers), in the canvas's CSS color.
function drawWave(canvas, peaks, top) {
  const dpr = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const height = Math.max(1, Math.round(canvas.clientHeight * dpr));
  canvas.width = width;
  canvas.height = height;
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, width, height);
  g.fillStyle = getComputedStyle(canvas).color;
  const values = peaks.peaks, n = values.length, mid = height / 2;
  for (let x = 0; x < width; x++) {
    const from = Math.floor((x * n) / width), to = Math.max(from + 1, Math.floor(((x + 1) * n) / width));
    let loudest = 0;
    for (let k = from; k < to && k < n; k++) loudest = Math.max(loudest, values[k]);
    if (!loudest) continue;
    const half = Math.max(0.5 * dpr, (loudest / top) * (mid - dpr));
    g.fillRect(x, mid - half, 1, 2 * half);
  }
}

// Click or drag on a waveform: the song's position follows the pointer.
function seekable(wave) {
  const to = (e) => {
    const box = wave.getBoundingClientRect();
    mixer.seek(Math.min(1, Math.max(0, (e.clientX - box.left) / box.width)));
  };
  wave.onpointerdown = (e) => {
    wave.setPointerCapture(e.pointerId);
    to(e);
  };
  wave.onpointermove = (e) => {
    if (wave.hasPointerCapture(e.pointerId)) to(e);
  };
}

function tick() {
  if (mixer.stems.length) {
    const at = mixer.position();
    if (mixer.playing && at >= mixer.duration) mixer.stop();
    const fraction = mixer.duration ? Math.min(1, at / mixer.duration) : 0;
    $("seek").value = fraction;
    $("stems").style.setProperty("--at", fraction);
    const time = `${mmss(at)} / ${mmss(mixer.duration)}`;
    if ($("time").textContent !== time) {
      $("time").textContent = time;
      $("seek").setAttribute("aria-valuetext", `${mmss(at)} of ${mmss(mixer.duration)}`);
    }
  }
  requestAnimationFrame(tick);
}

// ---- wiring ---------------------------------------------------------------------------------
$("file").onchange = (e) => choose(e.target.files[0]);
$("drop").ondragover = (e) => { e.preventDefault(); $("drop").classList.add("over"); };
$("drop").ondragleave = () => $("drop").classList.remove("over");
$("drop").ondrop = (e) => { e.preventDefault(); $("drop").classList.remove("over"); choose(e.dataTransfer.files[0]); };
$("send").onclick = send;
$("link").oninput = () => {
  if ($("link").value.trim() && chosen) { chosen = null; $("file").value = ""; say(""); }
  ready();
};
$("link").onkeydown = (e) => { if (e.key === "Enter") send(e); };
$("more").onclick = () => library.show(true);
// Space plays and pauses, the arrows move 5 s, wherever the focus is but in a field or on a control of its own.
document.addEventListener("keydown", (e) => {
  if (!mixer.stems.length || e.altKey || e.ctrlKey || e.metaKey) return;
  if (e.target.closest("input, select, textarea, button, a")) return;
  if (e.key === " ") mixer.playing ? mixer.pause() : mixer.play();
  else if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
    const step = e.key === "ArrowLeft" ? -5 : 5;
    mixer.seek(Math.min(1, Math.max(0, (mixer.position() + step) / mixer.duration)));
  } else return;
  e.preventDefault();
});
let resized = null;
window.addEventListener("resize", () => {
  clearTimeout(resized);
  resized = setTimeout(() => mixer.stems.length && mixer.draw(), 100);
});
$("keybox").onsubmit = saveKey;
$("play").onclick = () => (mixer.playing ? mixer.pause() : mixer.play());
$("stop").onclick = () => mixer.stop();
$("seek").oninput = (e) => mixer.seek(Number(e.target.value));
loadModels().catch((err) => say(err.message, true));
library.show();
tick();
