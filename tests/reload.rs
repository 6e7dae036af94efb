//! Live reload of the authorized-devices file (SIGHUP, or the file changing): an added device
//! is admitted, a removed one's live session is closed with `revoked` (and the device refused
//! when it comes back) while a third session goes on, and a file that does not parse leaves
//! the list in force.

mod cli_support;

use cli_support::reload::{keys, sighup_scenario};
use cli_support::{bin, tempdir, Device, Logged};

#[test]
fn sighup_admits_added_devices_closes_removed_ones_and_keeps_the_list_when_broken() {
    let dir = tempdir("reload");
    let (server_fp, devices) = keys(&dir);
    let mut server = bin();
    server
        .args(["server", "--listen", "127.0.0.1:0", "--key"])
        .arg(dir.join("server.key"))
        .arg("--authorized-devices")
        .arg(dir.join("devices"))
        .args(["--registry-poll", "3600", "--out"])
        .arg(dir.join("out.jsonl"))
        .stdout(std::process::Stdio::null());
    let mut server = Logged::spawn(server, &dir.join("server.log"));
    let addr = server.listening();
    sighup_scenario(&dir, &mut server, &devices, |name| {
        Device::spawn(
            &dir,
            &["--connect", &addr, "--server-key", &server_fp],
            name,
        )
    });
}
