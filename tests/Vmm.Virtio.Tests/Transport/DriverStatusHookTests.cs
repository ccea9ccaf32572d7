using System.Buffers.Binary;
using NUnit.Framework;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.Virtio.Transport;
using R = Vmm.Virtio.Spec.VirtioMmioRegisters;

namespace Vmm.Virtio.Tests.Transport;

/// <summary>
/// The transport tells its device the driver's status after each status write
/// (IVirtioDevice.DriverStatusChanged): what a vhost-user device passes on with SET_STATUS.
/// </summary>
[TestFixture]
public sealed class DriverStatusHookTests
{
    [Test]
    public void Every_status_write_reaches_the_device_without_the_device_owned_NEEDS_RESET_bit()
    {
        using GuestMemory memory = GuestMemory.Create(1 << 20);
        using var device = new StatusDevice();
        using var transport = new VirtioMmioTransport(device, memory, new CountingLine(7).Line);
        Write(transport, R.Status, 1);
        Write(transport, R.Status, 1 | 2);
        Write(transport, R.DriverFeaturesSel, 1);
        Write(transport, R.DriverFeatures, (uint)(VirtioFeatures.VERSION_1 >> 32));
        Write(transport, R.Status, 1 | 2 | 8);
        device.RaiseFault();
        Write(transport, R.Status, 1 | 2 | 8 | 4);
        Write(transport, R.Status, 0);

        Assert.That(device.Statuses, Is.EqualTo(new[] { 0x1, 0x3, 0xb, 0xf, 0x0 }).AsCollection,
            "each write in order; DEVICE_NEEDS_RESET (set by the fault) is the device's, not the driver's; status 0 after the reset");
    }

    private static void Write(VirtioMmioTransport transport, uint register, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        transport.Write(register, b);
    }

    private sealed class StatusDevice : IVirtioDevice
    {
        public List<int> Statuses { get; } = [];

        public VirtioDeviceId DeviceId => VirtioDeviceId.Entropy;

        public ulong DeviceFeatures => 0;

        public int QueueCount => 1;

        public int ConfigSize => 0;

        public event Action? ConfigChanged
        {
            add { }
            remove { }
        }

        public event Action<DeviceFault>? Faulted;

        public void RaiseFault() => Faulted?.Invoke(new DeviceFault(0, "test"));

        public void DriverStatusChanged(VirtioDeviceStatus status) => Statuses.Add((int)status);

        public ushort GetMaxQueueSize(int index) => 16;

        public void ReadConfig(uint offset, Span<byte> data) => data.Clear();

        public void WriteConfig(uint offset, ReadOnlySpan<byte> data)
        {
        }

        public void StartQueue(int index, VirtqueueResources resources, ulong features, VirtqueueState? initialState = null)
        {
        }

        public VirtqueueState? StopQueue(int index) => null;

        public void Reset()
        {
        }

        public byte[] SaveState() => [];

        public void RestoreState(ReadOnlySpan<byte> state)
        {
        }

        public void Dispose()
        {
        }
    }
}
