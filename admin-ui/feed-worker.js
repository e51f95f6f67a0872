// The browser's one console live feed, shared by every console tab (see feed.js). Each
// tab's port joins and leaves; the feed is open while at least one tab has joined, and
// the browser ends this worker (and its connection) when the last console tab is gone.

import { createHub } from "/admin/feed.js";

const hub = createHub();

self.addEventListener("connect", (event) => {
  const port = event.ports[0];
  port.addEventListener("message", ({ data }) => {
    if (data === "join" || data === "leave" || data === "signedOut") hub[data](port);
  });
  port.start();
});
