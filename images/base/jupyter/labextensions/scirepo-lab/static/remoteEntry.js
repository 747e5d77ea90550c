/*
 * scirepo-lab: a JupyterLab extension, written by hand (no build step, no dependencies).
 *
 * JupyterLab opens its launcher only once the URL is routed, and routing ends with the
 * workspace being saved, which a 500 ms debouncer delays (restarted by each change of
 * the state database while the page starts). The launcher is what a person arriving
 * waits for; it needs none of that. This plugin opens it as soon as the workspace's
 * layout is restored, when the main area is empty, exactly when JupyterLab would open it
 * later: JupyterLab's own check then finds the main area filled and adds no second one.
 * A URL that opens a document (/lab/tree/PATH) is left to JupyterLab.
 *
 * JupyterLab loads this file as a federated extension (images/base/README.md): it
 * registers a container in window._JUPYTERLAB whose "./extension" module exports the
 * plugin; no shared module is needed.
 */
(function () {
  "use strict";

  var NAME = "scirepo-lab";

  function pageConfig(key) {
    var el = document.getElementById("jupyter-config-data");
    try {
      return el ? JSON.parse(el.textContent || "{}")[key] : undefined;
    } catch (e) {
      return undefined;
    }
  }

  var earlyLauncher = {
    id: NAME + ":early-launcher",
    description: "Opens the launcher as soon as the layout is restored, if the main area is empty.",
    autoStart: true,
    activate: function (app) {
      var shell = app.shell;
      if (!shell || typeof shell.isEmpty !== "function" || pageConfig("treePath")) {
        return; // not JupyterLab's shell, or the URL opens a document
      }
      app.restored
        .then(function () {
          if (shell.isEmpty("main") && app.commands.hasCommand("launcher:create")) {
            return app.commands.execute("launcher:create");
          }
        })
        .catch(function (err) {
          console.error(NAME + ": cannot open the launcher", err);
        });
    }
  };

  var modules = {
    "./extension": function () {
      return { __esModule: true, default: [earlyLauncher] };
    }
  };

  var containers = (window._JUPYTERLAB = window._JUPYTERLAB || {});
  containers[NAME] = {
    init: function () {
      return Promise.resolve();
    },
    get: function (module) {
      if (!Object.prototype.hasOwnProperty.call(modules, module)) {
        return Promise.reject(new Error(NAME + " has no module " + module));
      }
      return Promise.resolve(modules[module]);
    }
  };
})();
