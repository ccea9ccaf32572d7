// EmbeddingSample: a host that embeds ManagedVmm with Akka.Hosting (docs/embedding.md quotes
// this file between its "snippet" markers; keep the two in sync).
//
//   dotnet EmbeddingSample.dll SOCKET
//
// Attaches the vhost-user blk back-end listening on SOCKET, places it on a virtio-pci slot of a
// VirtioMachine, initialises the guest driver, reads sector 0 and prints its first 16 bytes in hex.
// Exit codes: 0 success, 1 the read failed, 2 bad usage or unreachable socket.
using System.Buffers.Binary;
using Akka.Actor;
using Akka.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Vmm.Core.Machine;
using Vmm.Core.Memory;
using Vmm.Virtio;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Machine;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Hosting;
using Vmm.VhostUser.Protocol;

namespace EmbeddingSample;

public static class Program
{
    private const string DeviceName = "blk0";
    private const ulong MemorySize = 16 << 20;
    private const ulong AllocatorBase = 1 << 20;
    private static readonly TimeSpan IoTimeout = TimeSpan.FromSeconds(10);

    public static async Task<int> Main(string[] args)
    {
        if (args.Length != 1 || string.IsNullOrWhiteSpace(args[0]))
        {
            await Console.Error.WriteLineAsync("usage: EmbeddingSample SOCKET (a vhost-user blk back-end, e.g. ./vmm serve blk --socket SOCKET --disk FILE)");
            return 2;
        }

        string socketPath = args[0];

        // <snippet:host>
        HostApplicationBuilder builder = Host.CreateApplicationBuilder();
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.Services
            .AddManagedVmm()
            .AddAkka("vmm", (akka, sp) => akka
                .ConfigureLoggers(l => l.LogLevel = Akka.Event.LogLevel.WarningLevel)
                .WithManagedVmm(vm => vm
                    .AddVhostUserDevice(DeviceName, socketPath, VirtioDeviceId.Block, o => o with { Queues = 1 })));

        using IHost host = builder.Build();
        await host.StartAsync();
        // </snippet:host>
        try
        {
            return await RunAsync(host.Services.GetRequiredService<IManagedVmm>());
        }
        finally
        {
            // <snippet:shutdown>
            // Akka's CoordinatedShutdown stops the VM actor, its devices and their connections.
            await host.StopAsync();
            // </snippet:shutdown>
        }
    }

    private static async Task<int> RunAsync(IManagedVmm vmm)
    {
        // <snippet:device>
        IVirtioDevice device;
        try
        {
            device = await vmm.GetDeviceAsync(DeviceName);
        }
        catch (VhostUserConnectException e)
        {
            await Console.Error.WriteLineAsync(e.Message);
            return 2;
        }
        catch (Exception e) when (e is VhostUserProtocolException or VhostUserIncompatibleBackendException)
        {
            await Console.Error.WriteLineAsync($"The back-end of {DeviceName} cannot be used: {e.Message}");
            return 1;
        }

        IActorRef interrupts = await vmm.GetInterruptControllerAsync();
        // </snippet:device>

        // <snippet:machine>
        using GuestMemory memory = GuestMemory.Create(MemorySize);
        using var machine = new VirtioMachine(memory, GuestInterruptDelivery.FunctionBacked, interrupts);
        machine.AttachPci(device);
        // </snippet:machine>

        // IVirtioDevice calls block until the device's actors answer: they belong on a vCPU
        // thread (here the guest driver's), never on an actor or a thread-pool continuation.
        // <snippet:vcpu-thread>
        var vcpu = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            try
            {
                vcpu.SetResult(RunGuest(machine, memory));
            }
            catch (Exception e)
            {
                vcpu.SetException(e);
            }
        })
        { Name = "vcpu0", IsBackground = true };
        thread.Start();
        return await vcpu.Task;
        // </snippet:vcpu-thread>
    }

    /// <summary>What a vCPU does for the guest: register accesses through the bus, then I/O on the rings.</summary>
    private static int RunGuest(VirtioMachine machine, GuestMemory memory)
    {
        VirtioDeviceLocation location = machine.Discover().Single();

        // A host routes its vCPUs' MMIO exits to the bus the same way; here, the PCI ID register.
        Span<byte> id = stackalloc byte[4];
        OnMmioExit(machine.Bus, location.Address, id, isWrite: false);
        Console.WriteLine($"{DeviceName}: pci {BinaryPrimitives.ReadUInt16LittleEndian(id):x4}:{BinaryPrimitives.ReadUInt16LittleEndian(id[2..]):x4} at 0x{location.Address:x}");

        // <snippet:driver>
        var allocator = new GuestMemoryAllocator(AllocatorBase, memory.TotalSize - AllocatorBase);
        using VirtioGuestDriver driver = machine.CreateDriver(
            location, new GuestDriverQueueFactory(memory, allocator), new VirtioDriverOptions { QueueCount = 1, QueueSize = 128 });
        try
        {
            driver.Initialize();
        }
        catch (VirtioDriverException e)
        {
            Console.Error.WriteLine($"The guest driver could not initialise {DeviceName}: {e.Message}");
            return 1;
        }
        // </snippet:driver>

        Span<byte> config = stackalloc byte[VirtioBlkConfig.Size];
        driver.ReadConfig(0, config);
        Console.WriteLine($"{DeviceName}: {VirtioBlkConfig.Read(config).Capacity} sectors");

        // <snippet:read>
        VirtioDriverQueue queue = driver.Queues[0];
        var requests = new VirtioBlkRequests(queue.Queue, memory, new GuestBufferPool(allocator));
        ulong buffer = allocator.Allocate(VirtioBlk.SectorSize, VirtioBlk.SectorSize);
        lock (queue.SyncRoot)
        {
            _ = requests.TrySubmitRead(0, [new DriverBuffer(buffer, VirtioBlk.SectorSize, DeviceWritable: true)])
                ?? throw new InvalidOperationException("A new queue has room for one request.");
        }

        queue.Notify();
        VirtioBlkRequest? done = WaitForCompletion(queue, requests, IoTimeout);
        if (done is not { Succeeded: true })
        {
            Console.Error.WriteLine(done is null
                ? $"{DeviceName} did not complete the read within {IoTimeout.TotalSeconds:0} s."
                : $"{DeviceName} failed the read with status {done.Status}.");
            return 1;
        }

        var sector = new byte[VirtioBlk.SectorSize];
        memory.Read(buffer, sector);
        Console.WriteLine($"sector 0: {Convert.ToHexStringLower(sector.AsSpan(0, 16))}");
        // </snippet:read>

        // Status 0 resets the device: the back-end stops its queues before the host goes.
        driver.Shutdown();
        return 0;
    }

    // <snippet:mmio-exit>
    /// <summary>A vCPU exited on an MMIO access at guest-physical <paramref name="address"/>.</summary>
    private static void OnMmioExit(MmioBus bus, ulong address, Span<byte> data, bool isWrite)
    {
        if (isWrite)
        {
            bus.Write(address, data);
        }
        else
        {
            bus.Read(address, data); // all ones where no device is mapped, as on real hardware
        }
    }
    // </snippet:mmio-exit>

    /// <summary>"Enable interrupts, re-check, sleep" (virtio 1.2, 2.7.14): the completion wait of a guest driver.</summary>
    private static VirtioBlkRequest? WaitForCompletion(VirtioDriverQueue queue, VirtioBlkRequests requests, TimeSpan timeout)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (true)
        {
            lock (queue.SyncRoot)
            {
                if (requests.TryComplete(out VirtioBlkRequest? request))
                {
                    return request;
                }

                if (queue.Queue.EnableInterrupts())
                {
                    continue;
                }
            }

            long left = deadline - Environment.TickCount64;
            if (left <= 0 || !queue.WaitForInterrupt(TimeSpan.FromMilliseconds(left)))
            {
                lock (queue.SyncRoot)
                {
                    return requests.TryComplete(out VirtioBlkRequest? request) ? request : null;
                }
            }
        }
    }
}
