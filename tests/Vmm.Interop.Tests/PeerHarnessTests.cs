using Vmm.Interop.Tests.Harness;

namespace Vmm.Interop.Tests;

/// <summary>
/// The virtiofsd and testpmd peers start from the harness and our front-end negotiates with
/// them (<c>vmm run --workload probe</c>). A missing peer fails, never skips.
/// </summary>
public sealed class PeerHarnessTests : InteropTest
{
    [TestCase(VirtiofsdKind.C)]
    [TestCase(VirtiofsdKind.Rust)]
    public async Task Virtiofsd_offers_a_filesystem_device_with_a_hiprio_and_a_request_queue(VirtiofsdKind kind)
    {
        var shared = Directory.CreateDirectory(PathIn("shared")).FullName;
        var backend = await StartVirtiofsdAsync(kind, shared, PathIn("fs.sock"), tag: "harness");

        var r = await VmmRun.RunAsync("run", "--vhost-user", $"{backend.Socket},type=fs", "--workload", "probe");

        Assert.That(r.ExitCode, Is.Zero, r.Stderr + "\n" + backend.Describe());
        Assert.That(r.Stdout, Does.Contain("virtio device id 26 (FileSystem)"));
        Assert.That(r.Stdout, Does.Contain("back-end queues     2"));
        if (kind == VirtiofsdKind.Rust)
        {
            // --tag makes the Rust one offer CONFIG: tag[36] "harness", then num_request_queues = 1.
            Assert.That(r.Stdout, Does.Contain("config (40 bytes)   6861726e657373" + new string('0', 58) + "01000000"));
        }

        Assert.That(await backend.Process.WaitForExitAsync(TimeSpan.FromSeconds(30)), Is.True, "virtiofsd serves one connection and exits");
    }

    [Test]
    public async Task Testpmd_offers_a_net_device_with_packed_rings()
    {
        var backend = await StartTestpmdAsync(PathIn("net.sock"));

        var r = await VmmRun.RunAsync("run", "--vhost-user", $"{backend.Socket},type=net,queues=2", "--workload", "probe");

        Assert.That(r.ExitCode, Is.Zero, r.Stderr + "\n" + backend.Describe());
        Assert.That(r.Stdout, Does.Contain("virtio device id 1 (Net)"));
        Assert.That(r.Stdout, Does.Contain("RING_PACKED"));
        Assert.That(backend.HasExited, Is.False, "testpmd serves one front-end after another");
    }
}
