using Vmm.Core.Interrupts;
using Vmm.Core.Machine;
using Vmm.Virtio.Queues;
using R = Vmm.Virtio.Spec.VirtioMmioRegisters;

namespace Vmm.Virtio.Driver;

/// <summary>The guest side of virtio-mmio (virtio 1.2, 4.2.3), as Linux's virtio_mmio.c.</summary>
internal sealed class MmioDriverTransport : IDriverTransport
{
    /// <summary>virtio-mmio has no queue count register; probing stops at the first absent queue or here.</summary>
    private const int MaxProbedQueues = 1024;

    private readonly MmioBus _bus;
    private readonly ulong _base;
    private int _queueCount = -1;

    public MmioDriverTransport(MmioBus bus, ulong windowBase, int irq)
    {
        _bus = bus;
        _base = windowBase;
        SharedIrq = irq;
    }

    public string Name => $"virtio-mmio@0x{_base:x}";

    public int SharedIrq { get; }

    public int QueueCount
    {
        get
        {
            if (_queueCount < 0)
            {
                int n = 0;
                while (n < MaxProbedQueues && ReadQueueMaxSize(n) != 0)
                {
                    n++;
                }

                _queueCount = n;
            }

            return _queueCount;
        }
    }

    public byte ReadStatus() => (byte)Read(R.Status);

    public void WriteStatus(byte status)
    {
        Write(R.Status, status);
        if (status == 0)
        {
            _queueCount = -1;
        }
    }

    public ulong ReadDeviceFeatures()
    {
        // 4.2.2: the 64 feature bits are read 32 at a time through DeviceFeaturesSel.
        Write(R.DeviceFeaturesSel, 1);
        ulong high = Read(R.DeviceFeatures);
        Write(R.DeviceFeaturesSel, 0);
        return (high << 32) | Read(R.DeviceFeatures);
    }

    public void WriteDriverFeatures(ulong features)
    {
        Write(R.DriverFeaturesSel, 1);
        Write(R.DriverFeatures, (uint)(features >> 32));
        Write(R.DriverFeaturesSel, 0);
        Write(R.DriverFeatures, (uint)features);
    }

    public ushort ReadQueueMaxSize(int index)
    {
        Write(R.QueueSel, (uint)index);
        return (ushort)Read(R.QueueNumMax);
    }

    public ushort? SetupQueue(int index, VirtqueueParams queue, ushort? vector)
    {
        // 4.2.3.2: select, check not ready, size, the three areas, then QueueReady.
        Write(R.QueueSel, (uint)index);
        if (Read(R.QueueReady) != 0)
        {
            throw new VirtioDriverException($"{Name}: queue {index} is already in use.");
        }

        Write(R.QueueNum, queue.Size);
        Write(R.QueueDescLow, (uint)queue.DescriptorArea);
        Write(R.QueueDescHigh, (uint)(queue.DescriptorArea >> 32));
        Write(R.QueueDriverLow, (uint)queue.DriverArea);
        Write(R.QueueDriverHigh, (uint)(queue.DriverArea >> 32));
        Write(R.QueueDeviceLow, (uint)queue.DeviceArea);
        Write(R.QueueDeviceHigh, (uint)(queue.DeviceArea >> 32));
        Write(R.QueueReady, 1);
        return null;
    }

    public bool IsQueueReady(int index)
    {
        Write(R.QueueSel, (uint)index);
        return Read(R.QueueReady) == 1;
    }

    public void Notify(int index) => Write(R.QueueNotify, (uint)index);

    public uint ReadConfigGeneration() => Read(R.ConfigGeneration);

    public void ReadConfig(uint offset, Span<byte> data) => _bus.Read(_base + R.Config + offset, data);

    public void WriteConfig(uint offset, ReadOnlySpan<byte> data) => _bus.Write(_base + R.Config + offset, data);

    public int MsixTableSize => 0;

    public void EnableMsix(IReadOnlyList<MsiMessage> messages) => throw NoMsix();

    public void DisableMsix() => throw NoMsix();

    public void MaskMsixEntry(int entry, bool masked) => throw NoMsix();

    public void MaskMsixFunction(bool masked) => throw NoMsix();

    public void SetConfigMsixVector(ushort entry) => throw NoMsix();

    public uint ReadAndAckInterruptStatus()
    {
        // 4.2.3.4: read the reasons, then acknowledge exactly those.
        uint status = Read(R.InterruptStatus);
        if (status != 0)
        {
            Write(R.InterruptAck, status);
        }

        return status;
    }

    private NotSupportedException NoMsix() => new($"{Name}: virtio-mmio has no MSI-X.");

    private uint Read(uint register) => _bus.ReadUInt32(_base + register);

    private void Write(uint register, uint value) => _bus.WriteUInt32(_base + register, value);
}
