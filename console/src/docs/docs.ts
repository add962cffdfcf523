// The interactive API reference at /docs/: Swagger UI from the npm package
// swagger-ui-dist, bundled into the console's assets (no CDN), started by this
// file (the page's CSP allows no inline script). It reads ../openapi.json from
// the same origin; "Try it out" calls the API with a bearer token pasted into
// Authorize (get one with `refgate token`, or POST /oauth/token).
import SwaggerUIBundle from "swagger-ui-dist/swagger-ui-bundle.js";

SwaggerUIBundle({
  url: new URL("../openapi.json", window.location.href).toString(),
  dom_id: "#swagger-ui",
  deepLinking: true,
  docExpansion: "list",
  defaultModelsExpandDepth: 0,
  displayRequestDuration: true,
  tryItOutEnabled: false,
  validatorUrl: null,
  // nothing leaves this origin: no external validator badge, no remote $refs
  withCredentials: false,
});
