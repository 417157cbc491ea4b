mod netns;
#[test]
#[ignore]
fn debug_fleet() {
    let fleet = netns::Fleet::start(1);
    let path = fleet.dir.join("hoist.toml");
    std::fs::write(
        &path,
        format!(
            "app = \"demo\"\n\n[services.web]\ncommand = \"sleep 1000\"\n\n{}\n{}",
            fleet.ssh_toml(),
            fleet.hosts_toml(&["web"])
        ),
    )
    .unwrap();
    std::fs::write("/tmp/ssh-debug-dir", fleet.dir.display().to_string()).unwrap();
    while std::path::Path::new("/tmp/ssh-debug-dir").exists() {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
