// Sign-in for both pages: a stored token is checked with GET /api/me; without a valid one the
// page shows a sign-in form (POST /api/login) and nothing else. `?token=` in the address is
// accepted once (scripts, the README's links), stored, and removed from the address bar.
"use strict";
const Auth = (() => {
  const KEY = "coach.token";
  const EXPIRED_KEY = "coach.signin-expired"; // sessionStorage: the name whose sign-in lapsed
  let token = null;
  let me = null;

  function takeTokenFromUrl() {
    const params = new URLSearchParams(location.search);
    const t = params.get("token");
    if (!t) return;
    localStorage.setItem(KEY, t);
    params.delete("token");
    const q = params.toString();
    history.replaceState(null, "", location.pathname + (q ? `?${q}` : "") + location.hash);
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (token) headers.set("Authorization", `Bearer ${token}`);
    if (options.json !== undefined) {
      headers.set("Content-Type", "application/json");
      options = { ...options, body: JSON.stringify(options.json) };
    }
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401 && token) expired();
    return response;
  }

  // The token expired or the secret changed (a REST 401, or a socket refused as
  // "unauthorized"): forget it and reload, which brings back the sign-in form and drops
  // everything the page showed with the old token.
  function expired() {
    // The sign-in form after the reload says why it is back, with the name filled in (an
    // outside audit found a blank form in the middle of a call, and no word of why).
    sessionStorage.setItem(EXPIRED_KEY, me?.user || "");
    localStorage.removeItem(KEY);
    token = null;
    me = null;
    location.reload();
  }

  async function check() {
    token = localStorage.getItem(KEY);
    if (!token) {
      // Without a token /api/me answers only when the operator turned auth off (development):
      // ask first, so a first visit does not print a 401 in the console.
      const how = await fetch("/api/auth").then((a) => (a.ok ? a.json() : null), () => null);
      if (!how || how.required) return null;
    }
    const r = await fetch("/api/me", { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    if (!r.ok) {
      localStorage.removeItem(KEY);
      token = null;
      return null;
    }
    me = await r.json();
    return me;
  }

  function signInForm(root, pageName) {
    root.hidden = false;
    root.innerHTML = `
      <form class="signin-card" novalidate aria-labelledby="signin-title">
        <h1 id="signin-title">Sign in to the ${pageName}</h1>
        <label for="signin-user">Name</label>
        <input id="signin-user" name="user" autocomplete="username" required autofocus>
        <label for="signin-password">Password</label>
        <input id="signin-password" name="password" type="password" autocomplete="current-password" required>
        <p class="signin-expired" role="status" hidden>Your sign-in has expired. Sign in again to carry on: a live call goes on and opens again where it is.</p>
        <p class="signin-error" role="alert"></p>
        <button type="submit" class="primary">Sign in</button>
        <p class="hint">Trying it out? The demo logins are in the README (e.g. <code>ann</code> / <code>demo</code>).</p>
      </form>`;
    const form = root.querySelector("form");
    const error = root.querySelector(".signin-error");
    const lapsedUser = sessionStorage.getItem(EXPIRED_KEY);
    sessionStorage.removeItem(EXPIRED_KEY);
    if (lapsedUser !== null) {
      root.querySelector(".signin-expired").hidden = false;
      form.user.value = lapsedUser;
    }
    (lapsedUser ? form.password : form.user).focus();
    return new Promise((resolve) => {
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        error.textContent = "";
        const user = form.user.value.trim(), password = form.password.value;
        if (!user || !password) { error.textContent = "Enter your name and password."; return; }
        const button = form.querySelector("button");
        button.disabled = true;
        try {
          const r = await fetch("/api/login", {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ user, password }),
          });
          const body = await r.json().catch(() => ({}));
          if (!r.ok) { error.textContent = body.detail || `Sign-in failed (${r.status}).`; return; }
          localStorage.setItem(KEY, body.token);
          token = body.token;
          me = { user: body.user, role: body.role, team: body.team, team_members: body.team_members };
          root.hidden = true;
          root.replaceChildren();
          resolve(me);
        } catch (err) {
          error.textContent = `Sign-in failed: ${err.message || err}`;
        } finally {
          button.disabled = false;
        }
      });
    });
  }

  function badge(container) {
    if (!container || !me) return;
    const who = document.createElement("span");
    who.className = "who-am-i";
    who.textContent = `${me.user} · ${me.role}${me.team ? ` · team ${me.team}` : ""}`;
    const out = document.createElement("button");
    out.type = "button";
    out.textContent = "Sign out";
    out.addEventListener("click", signOut);
    container.replaceChildren(who, out);
  }

  // Resolves with {user, role, team} once signed in; the page stays hidden until then.
  async function require({ signinRoot, appRoot, pageName, badgeRoot }) {
    takeTokenFromUrl();
    appRoot.hidden = true;
    if (!(await check())) await signInForm(signinRoot, pageName);
    appRoot.hidden = false;
    badge(badgeRoot);
    return me;
  }

  function signOut() {
    localStorage.removeItem(KEY);
    token = null;
    me = null;
    location.reload();
  }

  // A WebSocket's token goes as a subprotocol, not in its address: the browser prints a failed
  // socket's address in its console, and proxies log addresses (coach/api/security.py).
  function socketProtocols() {
    return token ? ["coach.v1", `bearer.${token}`] : [];
  }

  // A server from before subprotocol tokens (mid rolling upgrade: this page came from a new
  // one) finds no credentials on the socket. Say so once, and from then on this page also
  // puts the token in the socket's address, as it used to (an outside scale-out audit).
  let tokenInAddress = false;
  function socketFallback(refusal, socketUrl) {
    if (!token || !refusal || !/missing credentials/.test(refusal.message || "")) return false;
    if (/[?&]token=/.test(socketUrl)) return false; // it had the token both ways: a real refusal
    tokenInAddress = true;
    return true;
  }
  function socketQuery(params) {
    if (tokenInAddress && token) params.set("token", token);
    return params;
  }

  return { api, require, signOut, expired, socketProtocols, socketFallback, socketQuery, token: () => token, me: () => me };
})();
