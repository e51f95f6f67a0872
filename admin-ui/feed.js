// The console's live feed (GET /v1/deliveries/changes), one connection per browser.
//
// Browsers allow six HTTP/1.1 connections per host; a feed per tab (or per page left in
// the back/forward cache) soon takes them all and the next page load hangs. So every
// console tab talks to one SharedWorker (feed-worker.js), which holds the one EventSource
// and relays what it hears. Where SharedWorker is missing (Chrome on Android), a tab holds
// its own feed, closed when the page is left.
//
// Messages to a tab: {type: "live", dropped} (connected; `dropped`: it had been down, so
// re-read), {type: "changed"}, {type: "down", closed} (`closed`: the server refused it,
// e.g. the session ended), {type: "signed-out"} (another tab signed out).
// Messages from a tab: "join", "leave", "signedOut".

const FEED_URL = "/v1/deliveries/changes";
const RETRY_MS = 3000;

/** The feed and its subscribers (tabs' ports, or this tab's own callback). */
export function createHub() {
  const subscribers = new Set();
  let source = null;
  let retry = null;
  let live = false;

  const broadcast = (message) => {
    for (const subscriber of subscribers) subscriber.postMessage(message);
  };

  function open() {
    close();
    let dropped = false;
    source = new EventSource(FEED_URL);
    source.addEventListener("ready", () => {
      live = true;
      broadcast({ type: "live", dropped });
      dropped = false;
    });
    source.addEventListener("changed", () => broadcast({ type: "changed" }));
    source.addEventListener("error", () => {
      dropped = true;
      live = false;
      const closed = source.readyState === EventSource.CLOSED;
      broadcast({ type: "down", closed });
      if (closed) {
        // EventSource gives up on a non-200 answer (an expired session, a proxy's 502);
        // tabs check their session, and leave if it has ended.
        source = null;
        retry = setTimeout(() => subscribers.size && open(), RETRY_MS);
      }
    });
  }

  function close() {
    clearTimeout(retry);
    retry = null;
    if (source) source.close();
    source = null;
    live = false;
  }

  return {
    join(subscriber) {
      subscribers.add(subscriber);
      if (!source && !retry) open();
      else if (live) subscriber.postMessage({ type: "live", dropped: false });
    },
    leave(subscriber) {
      subscribers.delete(subscriber);
      if (!subscribers.size) close();
    },
    signedOut(subscriber) {
      subscribers.delete(subscriber);
      close();
      broadcast({ type: "signed-out" });
      subscribers.clear();
    },
  };
}

/** Subscribes this tab to the browser's feed; returns {leave(), signedOut()}. */
export function connectFeed(onMessage) {
  if (typeof SharedWorker === "function") {
    const worker = new SharedWorker("/admin/feed-worker.js", { type: "module", name: "herald-feed" });
    const port = worker.port;
    port.onmessage = ({ data }) => onMessage(data);
    port.postMessage("join");
    return {
      leave: () => port.postMessage("leave"),
      signedOut: () => port.postMessage("signedOut"),
    };
  }
  const hub = createHub();
  const tab = { postMessage: onMessage };
  hub.join(tab);
  return { leave: () => hub.leave(tab), signedOut: () => hub.signedOut(tab) };
}
