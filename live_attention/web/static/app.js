// live-attention in the browser: the server's picture on a canvas (JPEG over a WebSocket), the
// window's keys and clicks back to it, and with --source browser this page's camera over WebRTC, or,
// when WebRTC does not connect within a few seconds (an SSH tunnel carries only TCP) or the URL says
// ?camera=ws, as JPEG frames over the WebSocket.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const q = token ? "?token=" + encodeURIComponent(token) : "";
// This page's id: the server closes the camera a page sent once all of that page's WebSockets are gone.
const PAGE_ID = Array.from({ length: 16 }, () => Math.floor(Math.random() * 36).toString(36)).join("");
const canvas = document.getElementById("view");
const ctx = canvas.getContext("2d");
const statusEl = document.getElementById("status");
const figures = document.getElementById("figures");
const cameraButton = document.getElementById("camera");
const la = (window.liveAttention = { frames: 0, connected: false, camera: "off", lastState: null, cameraSent: 0 });
const cameraOverWs = new URLSearchParams(location.search).get("camera") === "ws";
const WEBRTC_WAIT_MS = 5000;  // then the camera goes over the WebSocket
const WS_CAMERA = { maxWidth: 640, fps: 30, quality: 0.8, maxBuffered: 512 * 1024 };

// The keys the server takes from a page: the window's key table (ui/keys.py), filled in by the server.
const PAGE_KEYS = /*PAGE_KEYS*/[];
// Browser key names -> the names the server's key controller knows (the window's keys).
const NAMED = {
  ArrowUp: "up", ArrowDown: "down", ArrowLeft: "left", ArrowRight: "right", " ": "space",
  Backspace: "backspace", "=": "+", _: "-",
};
const KEYS = {};
for (const [browser, name] of Object.entries(NAMED)) if (PAGE_KEYS.includes(name)) KEYS[browser] = name;
for (const k of PAGE_KEYS) if (k.length === 1) { KEYS[k] = k; KEYS[k.toUpperCase()] = k; }

let ws = null;
let retry = 250;

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(proto + "//" + location.host + "/ws" + (q ? q + "&" : "?") + "page=" + PAGE_ID);
  ws.binaryType = "blob";
  ws.onopen = () => {
    la.connected = true; retry = 250; statusEl.textContent = "live"; statusEl.className = "";
    if (la.camera === "websocket") send({ camera: "claim" });  // back after a drop: still the camera
  };
  ws.onmessage = async (ev) => {
    if (typeof ev.data === "string") {  // the server's word: another page took the camera
      try { if (JSON.parse(ev.data).camera === "taken") cameraTaken(); } catch (err) { /* ignored */ }
      return;
    }
    const bitmap = await createImageBitmap(ev.data);
    if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
      canvas.width = bitmap.width; canvas.height = bitmap.height;
    }
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    la.frames += 1;
  };
  ws.onclose = () => {
    la.connected = false;
    statusEl.textContent = "reconnecting…"; statusEl.className = "off";
    setTimeout(connect, retry);  // a dropped network or a restarted server: back within a second
    retry = Math.min(1000, retry * 2);
  };
}

function send(msg) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
}

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const name = KEYS[ev.key];
  if (!name) return;
  ev.preventDefault();
  send({ key: name });
});

canvas.addEventListener("click", (ev) => {
  const r = canvas.getBoundingClientRect();
  const fx = (ev.clientX - r.left) / r.width, fy = (ev.clientY - r.top) / r.height;
  if (fx >= 0 && fx <= 1 && fy >= 0 && fy <= 1) send({ click: [fx, fy] });
  canvas.focus();
});

async function startCamera() {
  if (la.camera === "starting") return;  // a click while the page starts its camera on its own
  la.camera = "starting";
  cameraButton.hidden = true;
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } }, audio: false,
    });
    const video = document.getElementById("local");
    video.srcObject = stream;
    if (cameraOverWs) return sendOverWebSocket(stream, video);
    const pc = new RTCPeerConnection();
    for (const track of stream.getVideoTracks()) pc.addTrack(track, stream);
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((done) => {  // every candidate in the offer: the server does not trickle
      if (pc.iceGatheringState === "complete") return done();
      pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && done());
      setTimeout(done, 2000);
    });
    const res = await fetch("offer" + q, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, page: PAGE_ID }),
    });
    if (!res.ok) throw new Error(await res.text());
    await pc.setRemoteDescription(await res.json());
    pc.addEventListener("connectionstatechange", () => { if (la.camera !== "websocket") la.camera = pc.connectionState; });
    la.camera = "sent";
    cameraButton.hidden = true;
    setTimeout(() => {  // no media path (only TCP reaches the server): the WebSocket carries the camera
      if (pc.connectionState !== "connected" && la.camera !== "off") { pc.close(); sendOverWebSocket(stream, video); }
    }, WEBRTC_WAIT_MS);
  } catch (err) {
    la.camera = "failed: " + err;
    statusEl.textContent = "camera: " + (err.message || err);
    statusEl.className = "off";
    cameraButton.hidden = false;
  }
}
// The camera as JPEG frames over the WebSocket, at most 640 wide and 30 fps, none while the last
// ones are still in the socket's buffer (a slow link gets fewer frames, never a queue).
async function sendOverWebSocket(stream, video) {
  la.camera = "websocket";
  cameraButton.hidden = true;
  send({ camera: "claim" });  // the server takes frames only from the page that claimed the camera last
  await video.play();
  const grab = document.createElement("canvas");
  const g = grab.getContext("2d");
  const tick = () => {
    if (la.camera !== "websocket") { stream.getTracks().forEach((t) => t.stop()); return; }
    setTimeout(tick, 1000 / WS_CAMERA.fps);
    if (!ws || ws.readyState !== WebSocket.OPEN || ws.bufferedAmount > WS_CAMERA.maxBuffered || !video.videoWidth) return;
    const scale = Math.min(1, WS_CAMERA.maxWidth / video.videoWidth);
    grab.width = Math.round(video.videoWidth * scale); grab.height = Math.round(video.videoHeight * scale);
    g.drawImage(video, 0, 0, grab.width, grab.height);
    grab.toBlob((blob) => {
      if (blob && ws.readyState === WebSocket.OPEN && la.camera === "websocket") { ws.send(blob); la.cameraSent += 1; }
    }, "image/jpeg", WS_CAMERA.quality);
  };
  tick();
}

function cameraTaken() {
  if (la.camera !== "websocket") return;
  la.camera = "off";  // the sender stops at its next tick
  cameraButton.hidden = false;
}

cameraButton.addEventListener("click", startCamera);

function fmt(v, unit) { return v === null || v === undefined ? "–" : v.toFixed(0) + unit; }

async function poll() {
  try {
    const s = await (await fetch("state" + q, { cache: "no-store" })).json();
    la.lastState = s;
    figures.textContent = `${s.mode ?? ""} · model ${fmt(s.fps, " fps")} · latency ${fmt(s.latency_ms, " ms")} · ` +
      `${s.viewers} viewer${s.viewers === 1 ? "" : "s"}`;
    if (s.browser_source && la.camera === "off") {
      if (s.camera && !s.camera.connected) startCamera();  // nobody sends a camera yet: this page does
      else cameraButton.hidden = false;  // another page does: take over on a click
    }
  } catch (err) { /* the server is away: the WebSocket reconnects and says so */ }
  setTimeout(poll, 1000);
}

connect();
poll();
canvas.focus();
