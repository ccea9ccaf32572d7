using System.Buffers.Binary;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;
using L = Vmm.Virtio.Spec.VirtioPciLayout;

namespace Vmm.Virtio.Transport;

/// <summary>
/// A function's MSI-X table and Pending Bit Array (PCI 3.0 §6.8.2), as register models, with
/// one <see cref="InterruptLine"/> per entry.
/// </summary>
/// <remarks>
/// <para>Each entry holds the message the driver programmed (address low/high, data: §6.8.2.6
/// to §6.8.2.8) and its vector control, whose bit 0 is the entry's mask (§6.8.2.9; the other
/// bits are reserved and read 0). Entries come out of reset masked, with address and data 0.
/// An entry is masked when its own mask bit or the function mask (message control bit 14,
/// §6.8.2.3) is set, and its line follows: <see cref="InterruptLine.Mask"/> while masked, so a
/// raise only sets the entry's pending bit, and <see cref="InterruptLine.Unmask"/> when it
/// stops being masked, which sends the message once if it was pending (§6.8.3.4).</para>
/// <para>Where a message goes is the platform's: whenever an entry's message changes, the
/// owner's route turns it into the VM's line (null: none), and the entry's line delivers there.
/// An event-backed VM line lends its eventfd to the entry's line, masked or not, so the
/// eventfd a vhost-user back-end will be given is known as soon as the driver has programmed
/// the entry (Linux programs entries masked and unmasks them once the queue is set up).
/// Changing the message of an unmasked entry is undefined (§6.8.3.2); here it simply
/// retargets.</para>
/// <para>The PBA is read-only (§6.8.2.10): bit n is entry n's pending bit. Table and PBA take
/// aligned 4- and 8-byte accesses only (§6.8.2: other accesses are undefined; they are
/// ignored, and reads return 0).</para>
/// Register accesses arrive under the transport's lock; raises come from any thread and take none.
/// </remarks>
internal sealed class MsixTable
{
    private readonly MsixEntry[] _entries;
    private readonly Func<MsiMessage, InterruptLine?> _route;
    private readonly Action<string> _log;
    private volatile bool _enabled;

    public MsixTable(int size, Func<MsiMessage, InterruptLine?> route, Action<string> log)
    {
        _route = route;
        _log = log;
        _entries = new MsixEntry[size];
        for (int i = 0; i < size; i++)
        {
            _entries[i] = new MsixEntry(i);
        }
    }

    public int Size => _entries.Length;

    /// <summary>The line of each entry, in table order.</summary>
    public IReadOnlyList<InterruptLine> Lines => _entries;

    /// <summary>MSI-X Enable (message control bit 15). Read without the lock by the config interrupt.</summary>
    public bool Enabled => _enabled;

    /// <summary>Function Mask (message control bit 14): every entry is masked while it is set.</summary>
    public bool FunctionMasked { get; private set; }

    public InterruptLine this[int entry] => _entries[entry];

    /// <summary>The message entry <paramref name="entry"/> holds.</summary>
    public MsiMessage MessageOf(int entry) => _entries[entry].Message;

    /// <summary>Applies a new message control value (enable and function mask); the caller handles what enabling changes.</summary>
    public void SetControl(bool enabled, bool functionMasked)
    {
        _enabled = enabled;
        if (functionMasked != FunctionMasked)
        {
            FunctionMasked = functionMasked;
            foreach (MsixEntry entry in _entries)
            {
                ApplyMask(entry);
            }
        }
    }

    /// <summary>
    /// Clears every pending bit (the causes are handled some other way: PCI 3.0 §6.8.3.4) and
    /// returns the entries that had one.
    /// </summary>
    public List<int> ClearPending()
    {
        var cleared = new List<int>();
        foreach (MsixEntry entry in _entries)
        {
            if (entry.ClearPending())
            {
                cleared.Add(entry.Index);
            }
        }

        return cleared;
    }

    public void ReadTable(uint at, Span<byte> data)
    {
        data.Clear();
        if (!IsAligned(at, data.Length) || at / L.MsixEntrySize >= (uint)_entries.Length)
        {
            return;
        }

        MsixEntry entry = _entries[at / L.MsixEntrySize];
        for (int i = 0; i < data.Length; i += 4)
        {
            uint value = (int)((at + (uint)i) % L.MsixEntrySize) switch
            {
                L.MsixEntryAddressLow => entry.AddressLow,
                L.MsixEntryAddressHigh => entry.AddressHigh,
                L.MsixEntryData => entry.Data,
                _ => entry.MaskBit ? L.MsixVectorControlMask : 0,
            };
            BinaryPrimitives.WriteUInt32LittleEndian(data[i..], value);
        }
    }

    public void WriteTable(uint at, ReadOnlySpan<byte> data)
    {
        if (!IsAligned(at, data.Length) || at / L.MsixEntrySize >= (uint)_entries.Length)
        {
            _log($"{data.Length}-byte MSI-X table write at +0x{at:x} ignored: not an aligned access to an entry");
            return;
        }

        MsixEntry entry = _entries[at / L.MsixEntrySize];
        bool messageChanged = false;
        bool maskChanged = false;
        for (int i = 0; i < data.Length; i += 4)
        {
            uint value = BinaryPrimitives.ReadUInt32LittleEndian(data[i..]);
            switch ((int)((at + (uint)i) % L.MsixEntrySize))
            {
                case L.MsixEntryAddressLow:
                    // §6.8.2.6: bits 1:0 keep the address DWORD-aligned; they read 0 here.
                    messageChanged |= entry.AddressLow != (value & ~3u);
                    entry.AddressLow = value & ~3u;
                    break;
                case L.MsixEntryAddressHigh:
                    messageChanged |= entry.AddressHigh != value;
                    entry.AddressHigh = value;
                    break;
                case L.MsixEntryData:
                    messageChanged |= entry.Data != value;
                    entry.Data = value;
                    break;
                default:
                    bool mask = (value & L.MsixVectorControlMask) != 0;
                    maskChanged |= entry.MaskBit != mask;
                    entry.MaskBit = mask;
                    break;
            }
        }

        if (messageChanged)
        {
            entry.Route(_route(entry.Message));
            if (!IsMasked(entry))
            {
                WarnIfUnrouted(entry);
            }
        }

        if (maskChanged)
        {
            ApplyMask(entry);
        }
    }

    public void ReadPba(uint at, Span<byte> data)
    {
        data.Clear();
        if (!IsAligned(at, data.Length))
        {
            return;
        }

        for (int bit = 0; bit < data.Length * 8; bit++)
        {
            long index = ((long)at * 8) + bit;
            if (index < _entries.Length && _entries[index].IsPending)
            {
                data[bit / 8] |= (byte)(1 << (bit % 8));
            }
        }
    }

    /// <summary>Forgets every route (the transport is going away): the VM's lines no longer hold the entries.</summary>
    public void Detach()
    {
        foreach (MsixEntry entry in _entries)
        {
            entry.Route(null);
        }
    }

    private static bool IsAligned(uint at, int length) => length is 4 or 8 && at % (uint)length == 0;

    private bool IsMasked(MsixEntry entry) => entry.MaskBit || FunctionMasked;

    private void ApplyMask(MsixEntry entry)
    {
        if (IsMasked(entry))
        {
            entry.Mask();
            return;
        }

        WarnIfUnrouted(entry);
        entry.Unmask();
    }

    private void WarnIfUnrouted(MsixEntry entry)
    {
        if (entry.Vector < 0)
        {
            _log($"MSI-X entry {entry.Index} is unmasked with message 0x{entry.Message.Address:x}/0x{entry.Message.Data:x}, which reaches no vector: its interrupts are dropped");
        }
    }

    /// <summary>One table entry: the registers, and the line that raises its message.</summary>
    private sealed class MsixEntry : InterruptLine
    {
        private readonly ForwardingInterruptLine _route = new();

        public MsixEntry(int index) : base(-1)
        {
            Index = index;
            _route.RoutingChanged += _ => OnRoutingChanged();

            // §6.8.2.9: the mask bit is 1 after reset.
            Mask();
        }

        public int Index { get; }

        public uint AddressLow { get; set; }

        public uint AddressHigh { get; set; }

        public uint Data { get; set; }

        public bool MaskBit { get; set; } = true;

        public MsiMessage Message => new(((ulong)AddressHigh << 32) | AddressLow, Data);

        /// <summary>The vector the message reaches; -1 when it reaches none (the reset message, for one).</summary>
        public override int Vector => _route.Vector;

        public override EventFd? EventFd => _route.EventFd;

        public void Route(InterruptLine? target) => _route.Retarget(target);

        protected override void Deliver() => _route.Raise();
    }
}
