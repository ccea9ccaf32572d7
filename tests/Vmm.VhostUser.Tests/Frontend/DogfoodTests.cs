using Microsoft.Extensions.Logging.Abstractions;
using NUnit.Framework;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Memory;
using Vmm.Virtio;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Backend;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;
using Vmm.TestKit;

namespace Vmm.VhostUser.Tests.Frontend;

/// <summary>Our front-end against our back-end over socketpair(2) (openvmm's frontend_backend_dogfood).</summary>
[TestFixture]
public sealed class DogfoodTests : AkkaTest
{
    [Test]
    public async Task Frontend_against_our_backend_must_negotiate_run_a_queue_and_stop_it()
    {
        var fake = new FakeDevice();
        using var sessionStop = new CancellationTokenSource();
        Task? session = null;
        var options = new VhostUserDeviceOptions("socketpair", VirtioDeviceId.Entropy)
        {
            ConfigSize = 8,
            Connect = _ =>
            {
                (VhostUserFrontendConnection frontend, VhostUserChannel backend) = VhostUserFrontendConnection.CreatePair(
                    new VhostUserFrontendConnectionOptions { ConfigSize = 8 }, VhostUserBackendSession.ChannelOptions);
                var served = new VhostUserBackendSession(fake, backend, NullLogger.Instance);
                session = Task.Run(async () =>
                {
                    using (served)
                    {
                        await served.RunAsync(sessionStop.Token);
                    }
                });
                return Task.FromResult(frontend);
            },
        };

        using VhostUserDevice device = await VhostUserDevice.ConnectAsync(Sys, options);
        Assert.That(device.DeviceFeatures & FakeDevice.Features, Is.EqualTo(FakeDevice.Features));
        Assert.That(device.DeviceFeatures & ((1UL << 30) | (1UL << 26)), Is.Zero);
        Assert.That(device.Info.ProtocolFeatures & VhostUserProtocolFeatures.CONFIG, Is.Not.Zero);

        var config = new byte[8];
        await Task.Run(() => device.ReadConfig(0, config));
        Assert.That(config, Is.EqualTo(FakeDevice.Config));

        using GuestMemory memory = GuestMemory.Create(1 << 20);
        using var kick = new EventFd();
        var controller = CreateTestProbe();
        var resources = new VirtqueueResources(
            new VirtqueueParams(64, 0x1000, 0x2000, 0x3000), memory, kick, FunctionBackedInterruptLine.ToController(7, controller.Ref));
        await Task.Run(() => device.StartQueue(0, resources, FakeDevice.Features | VirtioFeatures.VERSION_1));

        // The back-end's device runs the queue on its own mapping of our memfd: what it writes we
        // see, and its interrupt reaches our interrupt controller through the call eventfd.
        await controller.ExpectMsgAsync<RaiseInterrupt>(m => Assert.That(m.Vector, Is.EqualTo(7)), TimeSpan.FromSeconds(5));
        Assert.That(memory.ReadUInt16(0x3000 + 2), Is.EqualTo(3));

        VirtqueueState? state = await Task.Run(() => device.StopQueue(0));
        Assert.That(state, Is.EqualTo(new VirtqueueState(3, 3)));

        await sessionStop.CancelAsync();
        device.Dispose();
        if (session is not null)
        {
            await session.WaitAsync(TimeSpan.FromSeconds(5));
        }
    }

    #region Infrastructure

    /// <summary>A device that, when its queue starts, completes three buffers and raises the interrupt.</summary>
    private sealed class FakeDevice : IVirtioDevice
    {
        public const ulong Features = 1UL << 9;

        public static readonly byte[] Config = [1, 2, 3, 4, 5, 6, 7, 8];

        private VirtqueueState? _state;

        public VirtioDeviceId DeviceId => VirtioDeviceId.Entropy;

        public ulong DeviceFeatures => Features;

        public int QueueCount => 1;

        public int ConfigSize => Config.Length;

        public event Action? ConfigChanged;

        public event Action<DeviceFault>? Faulted;

        public ushort GetMaxQueueSize(int index) => 256;

        public void ReadConfig(uint offset, Span<byte> data)
        {
            data.Clear();
            if (offset < Config.Length)
            {
                Config.AsSpan((int)offset, Math.Min(data.Length, Config.Length - (int)offset)).CopyTo(data);
            }
        }

        public void WriteConfig(uint offset, ReadOnlySpan<byte> data) => ConfigChanged?.Invoke();

        public void StartQueue(int index, VirtqueueResources resources, ulong features, VirtqueueState? initialState = null)
        {
            resources.Memory.WriteUInt16Release(resources.Params.DeviceArea + 2, 3);
            resources.Interrupt.Raise();
            _state = new VirtqueueState(3, 3);
        }

        public VirtqueueState? StopQueue(int index) => _state;

        public void Reset()
        {
            _state = null;
            Faulted?.Invoke(new DeviceFault(-1, "reset"));
        }

        public byte[] SaveState() => [];

        public void RestoreState(ReadOnlySpan<byte> state)
        {
        }

        public void Dispose()
        {
        }
    }

    #endregion
}
