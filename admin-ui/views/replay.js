// Progress of a bulk replay or recover (GET /v1/replays/{id}), until every delivery it
// made due has been attempted.

import { api, query } from "/admin/api.js";
import { h, replace } from "/admin/ui.js";

/** A live progress panel; call `refresh` on changes and `dispose` when leaving. */
export function replayProgress(replayId) {
  const bar = h("progress", { max: "1", value: "0", "aria-label": "Replay progress" });
  const text = h("p", { role: "status", "aria-live": "polite", text: "Starting…" });
  const panel = h(
    "section",
    { class: "card progress", id: "replay-progress", "aria-label": "Replay progress" },
    h("h2", { text: "Replay in progress" }),
    bar,
    text,
    h("a", { href: `/admin/deliveries${query({ replay_id: replayId })}`, text: "Show these deliveries" }),
  );
  let timer = null;
  let finished = false;
  let asked = 0;
  let drawn = 0;

  async function refresh() {
    if (finished) return;
    const n = ++asked;
    let replay;
    try {
      replay = await api("GET", `/v1/replays/${replayId}`);
    } catch (error) {
      text.textContent = `Could not read the progress: ${error.message}`;
      if (error.status === 404) stop();
      return;
    }
    // The poll and live refreshes overlap: never draw an older answer over a newer one.
    if (finished || n < drawn) return;
    drawn = n;
    const attempted = replay.succeeded + replay.failed;
    bar.max = Math.max(replay.total, 1);
    bar.value = replay.done ? bar.max : attempted;
    // A bulk replay searches back in time; a recover goes forward through its window.
    const recover = replay.kind === "recover";
    const searching = !replay.searching
      ? ""
      : replay.searched_to
        ? recover
          ? ` Still going through the period (up to ${new Date(replay.searched_to).toLocaleString()} so far).`
          : ` Still searching older deliveries (back to ${new Date(replay.searched_to).toLocaleString()} so far).`
        : recover
          ? " Still going through the period."
          : " Still searching older deliveries.";
    text.textContent = replay.done
      ? `Done: ${replay.total} replayed, ${replay.succeeded} succeeded, ${replay.failed} failed.`
      : `${attempted} of ${replay.total} attempted: ${replay.succeeded} succeeded, ${replay.failed} failed, ${replay.pending + replay.delivering} to go.${searching}`;
    if (replay.done) {
      stop();
      panel.dataset.done = "true";
      replace(panel.querySelector("h2"), "Replay finished");
    }
  }

  function stop() {
    finished = true;
    clearInterval(timer);
  }

  timer = setInterval(refresh, 1000);
  refresh();
  return { element: panel, refresh, dispose: stop };
}
