// Swagger UI over the API's schema (a file of its own: the pages' CSP allows no inline script).
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  window.SwaggerUIBundle({ url: "/api/openapi.json", dom_id: "#swagger-ui", syntaxHighlight: false });
});
