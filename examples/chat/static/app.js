// The chat page: joins a room on the server it was loaded from; everything else crosses
// the cluster through pgadapter.
(function () {
  const $ = (id) => document.getElementById(id);
  let socket;

  function add(html, cls) {
    const li = document.createElement("li");
    if (cls) li.className = cls;
    li.innerHTML = html;
    $("messages").appendChild(li);
    $("messages").scrollTop = $("messages").scrollHeight;
  }
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

  $("join").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $("name").value.trim();
    const room = $("room").value.trim();
    if (!name || !room) return;
    socket = io({ auth: { name, room }, transports: ["websocket"] });
    socket.on("welcome", (info) => {
      $("server").textContent = info.server;
      $("status").textContent = "joined as " + name;
      $("room-name").textContent = room;
      $("join").classList.add("hidden");
      $("chat").classList.remove("hidden");
      $("text").focus();
      add("you joined <b>" + esc(room) + "</b> on server " + esc(info.server), "system");
    });
    socket.on("message", (m) => {
      add('<span class="meta">' + esc(m.time) + " · " + esc(m.from) + " via server " + esc(m.server) + "</span><br>" + esc(m.text));
    });
    socket.on("online", (users) => {
      $("online").innerHTML = users.map((u) => "<li>" + esc(u.name) + ' <span class="meta">server ' + esc(u.server) + "</span></li>").join("");
    });
    socket.on("disconnect", () => { $("status").textContent = "disconnected"; });
  });

  $("send").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("text").value.trim();
    if (!text || !socket) return;
    socket.emit("message", text);
    $("text").value = "";
  });
})();
