using System.Buffers.Binary;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using Vmm.Core.Machine;
using Vmm.Core.Memory;
using Vmm.Virtio.Spec;
using R = Vmm.Virtio.Spec.VirtioMmioRegisters;

namespace Vmm.Virtio.Transport;

/// <summary>
/// virtio-mmio version 2 (virtio 1.2, 4.2) over an <see cref="IVirtioDevice"/>: one register
/// window, one interrupt. Registers below 0x100 are accessed 32 bits wide and aligned
/// (4.2.2.2); other accesses read as zero and are dropped, and say so on <see cref="Diagnostic"/>.
/// </summary>
/// <remarks>
/// MMIO has one interrupt for everything, and the driver learns the reason from
/// InterruptStatus (4.2.3.4), so every queue gets a function-backed line that sets the
/// used-buffer bit and then raises the VM's line. The VM's line may itself be event-backed:
/// the raise is then one eventfd write on the device's worker thread.
/// </remarks>
public sealed class VirtioMmioTransport : IMmioDevice, IDisposable
{
    /// <summary>The register window's size, as QEMU's microvm spaces its virtio-mmio devices.</summary>
    public const ulong WindowSize = 0x200;

    /// <summary>VendorID register: "MVMM" in little-endian ASCII (any value is allowed, 4.2.2).</summary>
    public const uint VendorIdValue = 0x4d4d564d;

    private readonly VirtioTransportCore _core;
    private readonly InterruptLine _queueLine;
    private int _interruptStatus;
    private uint _deviceFeaturesSel;
    private uint _driverFeaturesSel;
    private uint _queueSel;
    private uint _shmSel;

    public VirtioMmioTransport(IVirtioDevice device, GuestMemory memory, InterruptLine interrupt)
    {
        Interrupt = interrupt ?? throw new ArgumentNullException(nameof(interrupt));
        _queueLine = new FunctionBackedInterruptLine(interrupt.Vector, _ => RaiseUsedBuffer());
        _core = new VirtioTransportCore(device, memory, _ => _queueLine, RaiseConfigChange, Log);
    }

    /// <summary>Register-model events the guest would not see: ignored writes, refused requests.</summary>
    public event Action<string>? Diagnostic;

    public IVirtioDevice Device => _core.Device;

    /// <summary>The VM's interrupt line for this transport.</summary>
    public InterruptLine Interrupt { get; }

    public ulong OfferedFeatures => _core.OfferedFeatures;

    public ulong DriverFeatures => _core.DriverFeatures;

    public VirtioDeviceStatus Status => _core.Status;

    public uint InterruptStatus => (uint)Volatile.Read(ref _interruptStatus);

    public uint ConfigGeneration => _core.ConfigGeneration;

    /// <summary>Queue <paramref name="index"/>'s kick eventfd (what QueueNotify signals).</summary>
    public EventFd GetKickEventFd(int index) => _core.Queues[index].Kick;

    public void Read(ulong offset, Span<byte> data)
    {
        if (offset >= R.Config)
        {
            ReadConfigSpace(offset - R.Config, data);
            return;
        }

        data.Clear();
        if (data.Length != 4 || (offset & 3) != 0)
        {
            Log($"{data.Length}-byte read at 0x{offset:x3} ignored: registers are 32-bit");
            return;
        }

        BinaryPrimitives.WriteUInt32LittleEndian(data, ReadRegister((uint)offset));
    }

    public void Write(ulong offset, ReadOnlySpan<byte> data)
    {
        if (offset >= R.Config)
        {
            WriteConfigSpace(offset - R.Config, data);
            return;
        }

        if (data.Length != 4 || (offset & 3) != 0)
        {
            Log($"{data.Length}-byte write at 0x{offset:x3} ignored: registers are 32-bit");
            return;
        }

        WriteRegister((uint)offset, BinaryPrimitives.ReadUInt32LittleEndian(data));
    }

    public void Dispose() => _core.Dispose();

    private uint ReadRegister(uint offset)
    {
        lock (_core.Lock)
        {
            TransportQueue? q = SelectedQueue;
            switch (offset)
            {
                case R.MagicValue:
                    return R.MagicValueExpected;
                case R.Version:
                    return R.VersionModern;
                case R.DeviceId:
                    return (uint)_core.Device.DeviceId;
                case R.VendorId:
                    return VendorIdValue;
                case R.DeviceFeatures:
                    return _core.ReadDeviceFeatures(_deviceFeaturesSel);
                case R.DriverFeatures:
                    return _core.ReadDriverFeatures(_driverFeaturesSel);
                case R.QueueNumMax:
                    // 4.2.2: zero when the queue is not available.
                    return q?.MaxSize ?? 0u;
                case R.QueueNum:
                    return q?.Size ?? 0u;
                case R.QueueReady:
                    return q is { Ready: true } ? 1u : 0u;
                case R.QueueDescLow:
                    return (uint)(q?.DescriptorArea ?? 0);
                case R.QueueDescHigh:
                    return (uint)((q?.DescriptorArea ?? 0) >> 32);
                case R.QueueDriverLow:
                    return (uint)(q?.DriverArea ?? 0);
                case R.QueueDriverHigh:
                    return (uint)((q?.DriverArea ?? 0) >> 32);
                case R.QueueDeviceLow:
                    return (uint)(q?.DeviceArea ?? 0);
                case R.QueueDeviceHigh:
                    return (uint)((q?.DeviceArea ?? 0) >> 32);
                case R.InterruptStatus:
                    return InterruptStatus;
                case R.Status:
                    return (uint)_core.Status;
                case R.ShmLenLow:
                case R.ShmLenHigh:
                case R.ShmBaseLow:
                case R.ShmBaseHigh:
                    // 4.2.2: a region that does not exist reads as length -1; this device has none.
                    return 0xffff_ffff;
                case R.QueueReset:
                    // The reset completes within the write, so it always reads back as done (4.2.2).
                    return 0;
                case R.ConfigGeneration:
                    return _core.ConfigGeneration;
                case R.DeviceFeaturesSel:
                case R.DriverFeaturesSel:
                case R.QueueSel:
                case R.QueueNotify:
                case R.InterruptAck:
                case R.ShmSel:
                    Log($"read of write-only register 0x{offset:x3}");
                    return 0;
                default:
                    Log($"read of unknown register 0x{offset:x3}");
                    return 0;
            }
        }
    }

    private void WriteRegister(uint offset, uint value)
    {
        if (offset == R.QueueNotify)
        {
            // The data path: no lock, no hop, one eventfd write.
            _core.Notify(value & 0xffff);
            return;
        }

        if (offset == R.InterruptAck)
        {
            Interlocked.And(ref _interruptStatus, ~(int)value);
            return;
        }

        lock (_core.Lock)
        {
            TransportQueue? q = SelectedQueue;
            int qi = (int)_queueSel;
            switch (offset)
            {
                case R.DeviceFeaturesSel:
                    _deviceFeaturesSel = value;
                    break;
                case R.DriverFeaturesSel:
                    _driverFeaturesSel = value;
                    break;
                case R.DriverFeatures:
                    _core.WriteDriverFeatures(_driverFeaturesSel, value);
                    break;
                case R.QueueSel:
                    _queueSel = value;
                    break;
                case R.QueueNum:
                    if (q is not null && _core.WriteQueueField(qi, "QueueNum"))
                    {
                        q.Size = (ushort)Math.Min(value, ushort.MaxValue);
                    }

                    break;
                case R.QueueDescLow:
                case R.QueueDescHigh:
                case R.QueueDriverLow:
                case R.QueueDriverHigh:
                case R.QueueDeviceLow:
                case R.QueueDeviceHigh:
                    if (q is not null && _core.WriteQueueField(qi, $"register 0x{offset:x3}"))
                    {
                        WriteQueueAddress(q, offset, value);
                    }

                    break;
                case R.QueueReady:
                    if (q is null)
                    {
                        Log($"QueueReady for queue {_queueSel} ignored: the device has {_core.Queues.Length}");
                    }
                    else if (value == 1)
                    {
                        _core.EnableQueue(qi);
                    }
                    else if (value == 0)
                    {
                        _core.DisableQueue(qi);
                    }

                    break;
                case R.QueueReset:
                    if (q is not null && value == 1)
                    {
                        _core.ResetQueue(qi);
                    }

                    break;
                case R.Status:
                    _core.WriteStatus((byte)value);
                    if (value == 0)
                    {
                        ResetRegisters();
                    }

                    break;
                case R.ShmSel:
                    _shmSel = value;
                    break;
                default:
                    Log($"write of 0x{value:x8} to read-only or unknown register 0x{offset:x3} ignored");
                    break;
            }
        }
    }

    private TransportQueue? SelectedQueue => _queueSel < (uint)_core.Queues.Length ? _core.Queues[_queueSel] : null;

    private static void WriteQueueAddress(TransportQueue q, uint offset, uint value)
    {
        static ulong Low(ulong current, uint v) => (current & 0xffff_ffff_0000_0000UL) | v;
        static ulong High(ulong current, uint v) => (current & 0xffff_ffffUL) | ((ulong)v << 32);
        switch (offset)
        {
            case R.QueueDescLow: q.DescriptorArea = Low(q.DescriptorArea, value); break;
            case R.QueueDescHigh: q.DescriptorArea = High(q.DescriptorArea, value); break;
            case R.QueueDriverLow: q.DriverArea = Low(q.DriverArea, value); break;
            case R.QueueDriverHigh: q.DriverArea = High(q.DriverArea, value); break;
            case R.QueueDeviceLow: q.DeviceArea = Low(q.DeviceArea, value); break;
            case R.QueueDeviceHigh: q.DeviceArea = High(q.DeviceArea, value); break;
        }
    }

    private void ResetRegisters()
    {
        // 4.2.2.1 / 2.4: after reset every register reads its initial value, interrupts included.
        _deviceFeaturesSel = 0;
        _driverFeaturesSel = 0;
        _queueSel = 0;
        _shmSel = 0;
        Volatile.Write(ref _interruptStatus, 0);
    }

    private void ReadConfigSpace(ulong offset, Span<byte> data)
    {
        if (offset > uint.MaxValue)
        {
            data.Clear();
            return;
        }

        _core.Device.ReadConfig((uint)offset, data);
    }

    private void WriteConfigSpace(ulong offset, ReadOnlySpan<byte> data)
    {
        if (offset <= uint.MaxValue)
        {
            _core.Device.WriteConfig((uint)offset, data);
        }
    }

    private void RaiseUsedBuffer()
    {
        Interlocked.Or(ref _interruptStatus, (int)R.InterruptUsedBuffer);
        Interrupt.Raise();
    }

    private void RaiseConfigChange()
    {
        Interlocked.Or(ref _interruptStatus, (int)R.InterruptConfigChange);
        Interrupt.Raise();
    }

    private void Log(string message) => Diagnostic?.Invoke(message);
}
