using System.Buffers.Binary;
using System.Diagnostics;
using NUnit.Framework;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;
using Vmm.TestKit;

namespace Vmm.VhostUser.Tests.Frontend;

/// <summary>
/// Our front-end against qemu-storage-daemon's vhost-user-blk export. Explicit: it
/// needs the qemu-system-common package; tests/Vmm.Interop.Tests holds the suite CI runs.
/// </summary>
[TestFixture]
[Explicit("needs qemu-storage-daemon (qemu-system-common)")]
public sealed class QemuStorageDaemonTests : AkkaTest
{
    private const string Daemon = "/usr/bin/qemu-storage-daemon";

    [Test]
    public async Task Frontend_must_negotiate_and_run_a_queue_with_qemu_storage_daemon()
    {
        Assume.That(File.Exists(Daemon), Is.True, "qemu-storage-daemon is not installed");
        string dir = Directory.CreateTempSubdirectory("qsd-").FullName;
        string socket = Path.Combine(dir, "blk.sock");
        using var process = Process.Start(new ProcessStartInfo(Daemon)
        {
            ArgumentList =
            {
                "--blockdev", "driver=null-co,node-name=n0,size=67108864",
                "--export", $"type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path={socket},writable=on,num-queues=1",
            },
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        })!;
        try
        {
            for (int i = 0; i < 100 && !File.Exists(socket); i++)
            {
                await Task.Delay(20);
            }

            using VhostUserDevice device = await VhostUserDevice.ConnectAsync(Sys, new VhostUserDeviceOptions(socket, VirtioDeviceId.Block));
            Assert.That(device.DeviceFeatures & VirtioFeatures.VERSION_1, Is.Not.Zero);
            Assert.That(device.DeviceFeatures & (1UL << 30), Is.Zero);
            Assert.That(device.QueueCount, Is.EqualTo(1));
            var capacity = new byte[8];
            await Task.Run(() => device.ReadConfig(0, capacity));
            Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(capacity), Is.EqualTo(131072UL));

            using GuestMemory memory = GuestMemory.Create(1 << 20);
            using var kick = new EventFd();
            using var call = new EventFd();
            var resources = new VirtqueueResources(
                new VirtqueueParams(128, 0x10000, 0x11000, 0x12000), memory, kick, new EventBackedInterruptLine(0, call));
            ulong features = device.DeviceFeatures & (VirtioFeatures.VERSION_1 | (1UL << 9));
            await Task.Run(() => device.StartQueue(0, resources, features));
            VirtqueueState? state = await Task.Run(() => device.StopQueue(0));
            Assert.That(state, Is.EqualTo(new VirtqueueState(0, 0)));
            Assert.That(device.Info.ProtocolFeatures & VhostUserProtocolFeatures.CONFIGURE_MEM_SLOTS, Is.Not.Zero);
        }
        finally
        {
            process.Kill();
            await process.WaitForExitAsync();
            Directory.Delete(dir, recursive: true);
        }
    }
}
