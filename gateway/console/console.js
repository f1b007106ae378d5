// The gateway console: every vendor's health, refreshed every few seconds, and the dead
// letters with their actions. A module: the browser loads its parts from the gateway.

import { $, adminKey, keyGiven, keyRefused } from "./page.js";
import { listDeadLetters, wireDeadLetters } from "./dead-letters.js";
import { watchVendors } from "./vendors.js";

$("key-form").addEventListener("submit", keyGiven);
$("key-cancel").addEventListener("click", keyRefused);
$("forget-key").addEventListener("click", () => adminKey.clear());
$("forget-key").hidden = !adminKey.get();
wireDeadLetters();
watchVendors();
listDeadLetters();
