// The live side of the executioner pages (src/http/pages.rs, docs/web-ui.md). A page is complete
// without this file; with it, the page follows GET /api/v1/events and, when told that what it
// shows changed, fetches itself again and swaps its [data-live] parts; a job's log is appended
// from its log stream. Errors are kept in window.executionerErrors (the browser test reads it).
(function () {
  'use strict';
  var errors = [];
  window.executionerErrors = errors;
  window.addEventListener('error', function (e) { errors.push(String(e.message)); });
  window.addEventListener('unhandledrejection', function (e) { errors.push(String(e.reason)); });

  var body = document.body;
  var page = body.dataset.page;
  var pipeline = body.dataset.pipeline || null;
  var run = body.dataset.run ? Number(body.dataset.run) : null;
  var state = document.getElementById('live-state');

  function say(text) { if (state) { state.textContent = text; } }

  // Whether a change notice concerns this page.
  function concerns(change) {
    if (page === 'run') { return change.run === run; }
    if (page === 'pipeline') { return change.pipeline === pipeline; }
    return page === 'pipelines';
  }

  // At most one fetch in flight and one every MIN_GAP ms: a burst of notices is one refresh.
  var MIN_GAP = 500;
  var busy = false, again = false, last = 0;
  function refresh() {
    if (busy) { again = true; return; }
    var wait = last + MIN_GAP - Date.now();
    busy = true;
    setTimeout(function () {
      last = Date.now();
      fetch(location.href, { headers: { Accept: 'text/html' }, cache: 'no-store' })
        .then(function (r) {
          if (!r.ok) { throw new Error('HTTP ' + r.status); }
          return r.text();
        })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, 'text/html');
          document.querySelectorAll('[data-live]').forEach(function (old) {
            var part = fresh.getElementById(old.id);
            if (part) {
              var scroll = [old.scrollLeft, old.scrollTop];
              var node = document.importNode(part, true);
              old.replaceWith(node);
              node.scrollLeft = scroll[0];
              node.scrollTop = scroll[1];
            }
          });
          say('live');
        })
        .catch(function (e) { say('not updated (' + e.message + ')'); })
        .then(function () {
          busy = false;
          if (again) { again = false; refresh(); }
        });
    }, Math.max(0, wait));
  }

  if (page !== 'error' && window.EventSource) {
    var opened = false;
    var events = new EventSource('/api/v1/events');
    events.addEventListener('change', function (e) {
      if (concerns(JSON.parse(e.data))) { refresh(); }
    });
    events.addEventListener('refresh', refresh);
    events.onopen = function () {
      // A reconnection may have missed notices.
      if (opened) { refresh(); }
      opened = true;
      say('live');
    };
    events.onerror = function () { say('reconnecting…'); };
    window.addEventListener('pagehide', function () { events.close(); });
  }

  // The selected job's log, from where the page's copy ends.
  var log = document.getElementById('log-text');
  if (log && log.dataset.stream && window.EventSource) {
    var logState = document.getElementById('log-state');
    var lines = new EventSource(log.dataset.stream + '?from=' + log.dataset.offset);
    lines.addEventListener('line', function (e) {
      var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.appendChild(document.createTextNode(e.data + '\n'));
      if (atEnd) { log.scrollTop = log.scrollHeight; }
    });
    lines.addEventListener('end', function (e) {
      lines.close();
      if (logState) { logState.textContent = e.data; }
    });
    window.addEventListener('pagehide', function () { lines.close(); });
  }

  // A click on a job of the picture selects it, as the links of the jobs table do.
  document.addEventListener('click', function (e) {
    var job = e.target.closest ? e.target.closest('g[data-job]') : null;
    if (!job) { return; }
    var url = new URL(location.href);
    url.searchParams.set('job', job.dataset.job);
    url.hash = 'log';
    location.assign(url.toString());
  });
}());
