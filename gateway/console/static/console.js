// The staff console's own script (served by the gateway; the CSP allows no inline script).
//
// * Refusals (400/403/409 with a Korean message) are shown: htmx swaps only 2xx by default.
// * Live updates: one EventSource on /events per inbox or thread page. An event for the shown
//   queue reloads the list fragment; an event for the shown thread reloads its conversation.
//   Reloads are coalesced (one in flight, at most one pending), so a burst of events costs at
//   most two requests; nothing polls.
// * Canned answers: a button puts its text into the answer box (nothing is sent).
(function () {
  "use strict";

  document.addEventListener("htmx:beforeSwap", function (e) {
    var status = e.detail.xhr.status;
    if (status >= 400 && status < 500 && status !== 401) {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
    }
  });

  // `load` returns a promise; calls while it runs collapse into one more run afterwards.
  function coalesced(load) {
    var running = false;
    var again = false;
    function run() {
      if (running) {
        again = true;
        return;
      }
      running = true;
      Promise.resolve()
        .then(load)
        .catch(function () {})
        .then(function () {
          running = false;
          if (again) {
            again = false;
            run();
          }
        });
    }
    return run;
  }

  function markFresh(elements) {
    elements.forEach(function (el) {
      el.classList.remove("is-fresh");
      void el.offsetWidth; // restart the highlight's animation
      el.classList.add("is-fresh");
    });
  }

  function inboxPage(root) {
    var queue = root.getAttribute("data-queue");
    var view = root.getAttribute("data-view") || "open";
    var fresh = [];
    var reload = coalesced(function () {
      var meta = document.querySelector("#inbox-list [data-list-url]");
      if (!meta) {
        return null;
      }
      var wanted = fresh;
      fresh = [];
      return htmx
        .ajax("GET", meta.getAttribute("data-list-url"), { target: "#inbox-list", swap: "innerHTML" })
        .then(function () {
          markFresh(
            wanted
              .map(function (tid) {
                return document.querySelector('#inbox-list li[data-thread="' + tid + '"]');
              })
              .filter(Boolean)
          );
        });
    });
    // Another queue's event changes only its tab's counts (a small request, no access record).
    var recount = coalesced(function () {
      var url = "/inbox/counts?queue=" + encodeURIComponent(queue) + "&view=" + encodeURIComponent(view);
      return htmx.ajax("GET", url, { target: "#queue-tabs", swap: "outerHTML" });
    });
    return function (ev) {
      if (ev.k === "resync" || ev.q === queue) {
        if (ev.k === "message" && /^t[0-9a-f]{20}$/.test(ev.t || "")) {
          fresh.push(ev.t);
        }
        reload();
      } else if (ev.q) {
        recount();
      }
    };
  }

  // The newest message is at the bottom of the conversation: keep it in view.
  function scrollToEnd() {
    var conversation = document.getElementById("conversation");
    if (conversation) {
      conversation.scrollTop = conversation.scrollHeight;
    }
  }

  function threadPage(root) {
    var tid = root.getAttribute("data-thread");
    scrollToEnd();
    document.addEventListener("htmx:oobAfterSwap", function (e) {
      if (e.detail.target && e.detail.target.id === "conversation") {
        scrollToEnd();
      }
    });
    var reload = coalesced(function () {
      var known = {};
      document.querySelectorAll("#conversation li[data-id]").forEach(function (li) {
        known[li.getAttribute("data-id")] = true;
      });
      return htmx
        .ajax("GET", "/threads/" + tid + "/conversation", { target: "#conversation", swap: "none" })
        .then(function () {
          var added = [];
          document.querySelectorAll("#conversation li[data-id]").forEach(function (li) {
            if (!known[li.getAttribute("data-id")]) {
              added.push(li);
            }
          });
          markFresh(added);
        });
    });
    // "read" is this page's own doing (opening the thread marks it read): never a reason to reload.
    return function (ev) {
      if (ev.k === "resync" || (ev.t === tid && ev.k !== "read")) {
        reload();
      }
    };
  }

  function liveStatus(text) {
    var el = document.getElementById("live-status");
    if (!el) {
      el = document.createElement("p");
      el.id = "live-status";
      el.className = "live-status";
      el.setAttribute("role", "status");
      var main = document.querySelector("main");
      if (main) {
        main.insertBefore(el, main.firstChild);
      }
    }
    el.textContent = text;
    el.hidden = !text;
  }

  function live(handler) {
    if (!window.EventSource) {
      return;
    }
    var source = null;
    var openedAt = 0;
    var lastActivity = 0;
    var broken = false;

    function connect() {
      source = new EventSource("/events");
      openedAt = Date.now();
      source.onopen = function () {
        liveStatus("");
        if (broken) {
          broken = false;
          handler({ k: "resync" }); // events may have been missed while disconnected
        }
      };
      source.onerror = function () {
        broken = true;
      };
      source.onmessage = function (message) {
        var ev;
        try {
          ev = JSON.parse(message.data);
        } catch (_) {
          return;
        }
        if (ev.k === "idle" || ev.k === "ended") {
          // An open page is not activity: the server ends the stream at the session's idle time.
          source.close();
          source = null;
          if (ev.k === "idle" && lastActivity > openedAt) {
            connect();
          } else {
            liveStatus("자동 갱신이 멈췄습니다. 화면을 새로 고치면 다시 시작합니다.");
          }
          return;
        }
        handler(ev);
      };
    }

    // The person's own requests (not this script's reloads, whose element is the reloaded
    // container) keep the session alive on the server, so they may reopen the stream.
    document.addEventListener("htmx:afterRequest", function (e) {
      var elt = e.detail.elt;
      if (elt && (elt.id === "inbox-list" || elt.id === "conversation" || elt.id === "queue-tabs")) {
        return;
      }
      lastActivity = Date.now();
      if (!source) {
        connect();
      }
    });
    connect();
  }

  function cannedAnswers() {
    document.addEventListener("click", function (e) {
      var button = e.target.closest ? e.target.closest(".canned-answer") : null;
      if (!button) {
        return;
      }
      var box = document.getElementById("answer-text");
      if (!box) {
        return;
      }
      var text = button.getAttribute("data-text") || "";
      if (box.value.trim() && box.value !== text && !window.confirm("입력한 답장을 이 답변으로 바꿀까요?")) {
        return;
      }
      box.value = text;
      box.focus();
      box.dispatchEvent(new Event("input", { bubbles: true })); // the byte counter follows
    });
  }

  function start() {
    cannedAnswers();
    var inbox = document.querySelector('[data-live="inbox"]');
    var thread = document.querySelector('[data-live="thread"]');
    if (inbox && window.htmx) {
      live(inboxPage(inbox));
    } else if (thread && window.htmx) {
      live(threadPage(thread));
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
