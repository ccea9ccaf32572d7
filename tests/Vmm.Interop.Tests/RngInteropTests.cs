using Vmm.Interop.Tests.Harness;

namespace Vmm.Interop.Tests;

/// <summary>
/// QEMU's vhost-user-rng-pci with a Linux guest against <c>./vmm serve rng</c>. Debian 12 has
/// no third-party vhost-user-rng back-end, so the guest's rng scenario is checked on its own
/// with QEMU's built-in virtio-rng-pci.
/// </summary>
public sealed class RngInteropTests : InteropTest
{
    [Test]
    public async Task Guest_reads_random_bytes_from_qemus_builtin_virtio_rng()
    {
        var guest = await RunGuestAsync(new GuestOptions { Scenario = "rng", Device = GuestDevice.BuiltinRng });
        AssertRandomBytes(guest);
    }

    [Test]
    public async Task Guest_reads_random_bytes_from_hwrng()
    {
        Assert.That(await QemuGuest.SupportsDeviceAsync("vhost-user-rng-pci"), Is.True,
            $"{QemuGuest.Qemu} -device help does not list vhost-user-rng-pci (QEMU 7.2 from Debian 12 has it).");
        var socket = PathIn("rng.sock");
        var backend = Own(await BackendProcess.StartVmmRngAsync(socket));

        var guest = await RunGuestAsync(new GuestOptions { Scenario = "rng", Socket = socket, Device = GuestDevice.Rng }, backend);
        AssertRandomBytes(guest);
    }

    static void AssertRandomBytes(QemuGuest guest)
    {
        Assert.That(guest.Require("rng_current"), Does.StartWith("virtio_rng"), "the guest's current hw_random source");
        var first = guest.Require("rng");
        var second = guest.Require("rng2");
        Assert.That(first, Has.Length.EqualTo(128), "64 bytes from /dev/hwrng, as hex");
        Assert.That(second, Has.Length.EqualTo(128), "64 more bytes from /dev/hwrng, as hex");
        Assert.That(Convert.FromHexString(first).Distinct().Count(), Is.GreaterThan(16), "the bytes are nearly constant");
        Assert.That(second, Is.Not.EqualTo(first), "two reads returned the same bytes");
    }
}
