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
 * Second, settings validated only when there is something to validate. JupyterLab's
 * setting registry checks every plugin's user settings against its schema with a
 * validator that AJV compiles per schema (about a hundred at each page load), even when
 * the user has set nothing: the raw settings are "{}". For a schema whose top level can
 * only accept an empty object (an object type with nothing but properties and the like:
 * no required, no combinators, no references), that check cannot fail, so its compiling
 * waits until the user's settings hold something. The composite (user settings and
 * defaults) is still made and checked by JupyterLab's own composer, as before. Turned
 * off with the plugin id "scirepo-lab:settings" in disabledExtensions.
 *
 * JupyterLab loads this file as a federated extension (images/base/README.md): it
 * registers a container in window._JUPYTERLAB whose "./extension" module exports the
 * plugin. The setting registry's module comes from the share scope JupyterLab passes to
 * init(); this file bundles nothing of its own.
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

  // The top-level keywords of a schema that every empty object satisfies.
  var EMPTY_OK = {
    type: 1, title: 1, description: 1, properties: 1, patternProperties: 1,
    additionalProperties: 1, propertyNames: 1, maxProperties: 1, definitions: 1,
    $defs: 1, $schema: 1, $comment: 1, examples: 1, default: 1, readOnly: 1,
    writeOnly: 1, deprecated: 1
  };
  var PLUGIN_SCHEMA = "jupyterlab-plugin-schema"; // the schema of schemas: always compiled

  function acceptsEveryEmptyObject(schema) {
    if (!schema || typeof schema !== "object" || schema.type !== "object") {
      return false;
    }
    return Object.keys(schema).every(function (key) {
      return EMPTY_OK.hasOwnProperty(key) || key.indexOf("jupyter.") === 0;
    });
  }

  function isEmptyObject(data) {
    return !!data && typeof data === "object" && !Array.isArray(data) &&
      Object.keys(data).length === 0;
  }

  // Make one AJV instance compile such a schema only for data that is not {}.
  function compileLazily(ajv) {
    var getSchema = ajv.getSchema;
    ajv.getSchema = function (key) {
      var added = this.schemas && this.schemas[key];
      if (key === PLUGIN_SCHEMA || !added || added.validate ||
          !acceptsEveryEmptyObject(added.schema)) {
        return getSchema.call(this, key);
      }
      var self = this;
      var compiled = null;
      var validate = function (data) {
        if (!compiled && isEmptyObject(data)) {
          validate.errors = null;
          skipped += 1;
          if (document.body) {
            document.body.setAttribute("data-scirepo-settings-skipped", String(skipped));
          }
          return true;
        }
        compiled = compiled || getSchema.call(self, key);
        var valid = compiled(data);
        validate.errors = compiled.errors;
        return valid;
      };
      return validate;
    };
    ajv.__scirepoLazy = true;
  }

  var skipped = 0; // checks of {} not compiled for (shown on <body> for the tests)

  function lazySettings(registry) {
    var Validator = registry && registry.DefaultSchemaValidator;
    var proto = Validator && Validator.prototype;
    var validateData = proto && proto.validateData;
    if (typeof validateData !== "function" || validateData.__scirepo) {
      return;
    }
    var patched = function (plugin, populate) {
      var ajv = this._validator;
      if (ajv && typeof ajv.getSchema === "function" && !ajv.__scirepoLazy) {
        compileLazily(ajv);
      }
      return validateData.apply(this, arguments);
    };
    patched.__scirepo = true;
    proto.validateData = patched;
  }

  function disabled(id) {
    var list = pageConfig("disabledExtensions") || [];
    return list.indexOf(id) >= 0;
  }

  var shared = null; // the share scope JupyterLab gives init()

  function settingRegistry() {
    var versions = shared && shared["@jupyterlab/settingregistry"];
    var found = versions ? Object.keys(versions) : [];
    if (found.length !== 1) {
      return Promise.resolve(null); // none, or several: leave JupyterLab as it is
    }
    return Promise.resolve(versions[found[0]].get()).then(function (factory) {
      return factory();
    });
  }

  // Each module: a promise of its exports.
  var modules = {
    "./extension": function () {
      var plugins = { __esModule: true, default: [earlyLauncher] };
      if (disabled(NAME + ":settings")) {
        return Promise.resolve(plugins);
      }
      return settingRegistry()
        .then(function (registry) {
          lazySettings(registry);
          return plugins;
        })
        .catch(function (err) {
          console.warn(NAME + ": settings are validated as JupyterLab does", err);
          return plugins;
        });
    }
  };

  var containers = (window._JUPYTERLAB = window._JUPYTERLAB || {});
  containers[NAME] = {
    init: function (scope) {
      shared = scope || null;
      return Promise.resolve();
    },
    get: function (module) {
      if (!Object.prototype.hasOwnProperty.call(modules, module)) {
        return Promise.reject(new Error(NAME + " has no module " + module));
      }
      // A container's get() gives a factory, which JupyterLab calls for the module.
      return modules[module]().then(function (exports) {
        return function () {
          return exports;
        };
      });
    }
  };
})();
