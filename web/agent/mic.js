// "Try with your microphone": stream this browser's microphone to the server over WebRTC
// (POST /webrtc/offer, one round trip, no trickle ICE) and watch the call's live transcript.
// Uses agent.js's watch(callId) and the signed-in token (Auth).
"use strict";
(() => {
  const el = (id) => document.getElementById(id);
  const button = el("mic");
  let pc = null, stream = null;

  function iceComplete(peer, timeoutMs = 5000) {
    if (peer.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { peer.removeEventListener("icegatheringstatechange", check); resolve(); };
      const check = () => { if (peer.iceGatheringState === "complete") done(); };
      peer.addEventListener("icegatheringstatechange", check);
      setTimeout(done, timeoutMs); // send what was gathered so far
    });
  }

  function stop(message) {
    if (pc) pc.close();
    if (stream) stream.getTracks().forEach((t) => t.stop());
    pc = null; stream = null;
    button.textContent = "Try with your microphone";
    button.disabled = false;
    if (message) el("status").textContent = message;
  }

  async function start() {
    button.disabled = true;
    el("status").textContent = "Asking for the microphone…";
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
      pc = new RTCPeerConnection();
      stream.getAudioTracks().forEach((t) => pc.addTrack(t, stream));
      pc.addEventListener("connectionstatechange", () => {
        if (pc && (pc.connectionState === "failed" || pc.connectionState === "disconnected")) {
          stop(`Microphone connection ${pc.connectionState}.`);
        }
      });
      await pc.setLocalDescription(await pc.createOffer());
      await iceComplete(pc);
      const body = { sdp: pc.localDescription.sdp, type: "offer" };
      const r = await Auth.api("/webrtc/offer", { method: "POST", json: body });
      if (!r.ok) throw new Error(`${r.status} ${(await r.text()).slice(0, 200)}`);
      const answer = await r.json();
      await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
      watch(answer.call_id);
      button.textContent = "Stop microphone";
      button.disabled = false;
    } catch (err) {
      stop(`Microphone: ${err.message || err}`);
    }
  }

  button.addEventListener("click", () => (pc ? stop("Microphone stopped.") : start()));
})();
