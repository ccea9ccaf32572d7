// EmbeddingSample: a host that embeds ManagedVmm with Akka.Hosting (docs/embedding.md quotes
// this file between its "snippet" markers; keep the two in sync).
//
//   dotnet EmbeddingSample.dll SOCKET [--watch] [--ManagedVmm:Devices:blk0:KEY=VALUE]...
//
// Attaches the vhost-user blk back-end listening on SOCKET, places it on a virtio-pci slot of a
// VirtioMachine, initialises the guest driver, reads sector 0 and prints its first 16 bytes in hex.
// With --watch it then stays, printing what happens to the device (connection lost and restored,
// the back-end's config changes, a give-up), until its stdin is closed. The device's other options
// come from configuration (e.g. --ManagedVmm:Devices:blk0:Reconnect=false).
// Exit codes: 0 success, 1 the read failed, 2 bad usage or unreachable socket.
using System.Buffers.Binary;
using Akka.Actor;
using Akka.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using Vmm.Core.Machine;
using Vmm.Core.Memory;
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
        if (args.Length < 1 || string.IsNullOrWhiteSpace(args[0]) || args[0].StartsWith('-'))
        {
            await Console.Error.WriteLineAsync("usage: EmbeddingSample SOCKET [--watch] [--ManagedVmm:Devices:blk0:KEY=VALUE]... (a vhost-user blk back-end, e.g. ./vmm serve blk --socket SOCKET --disk FILE)");
            return 2;
        }

        string socketPath = args[0];
        bool watch = args.Contains("--watch");
        string[] settings = [.. args.Skip(1).Where(a => a != "--watch")];

        // <snippet:host>
        HostApplicationBuilder builder = Host.CreateApplicationBuilder(settings);
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.Services.Configure<ConsoleLoggerOptions>(o => o.LogToStandardErrorThreshold = LogLevel.Trace);

        // The device in the options pattern: the "ManagedVmm" section of the configuration
        // (appsettings.json, environment, command line) holds its settings; here the socket.
        builder.Configuration.AddInMemoryCollection([
            new($"{ManagedVmmOptions.SectionName}:Devices:{DeviceName}:SocketPath", socketPath),
            new($"{ManagedVmmOptions.SectionName}:Devices:{DeviceName}:Queues", "1"),
        ]);
        builder.Services
            .AddManagedVmm(builder.Configuration.GetSection(ManagedVmmOptions.SectionName))
            .AddAkka("vmm", (akka, sp) => akka
                .ConfigureLoggers(l =>
                {
                    // Akka's own log goes through the host's ILogger.
                    l.LogLevel = Akka.Event.LogLevel.WarningLevel;
                    l.ClearLoggers();
                    l.AddLoggerFactory();
                })
                .WithManagedVmm());

        using IHost host = builder.Build();
        await host.StartAsync();
        // </snippet:host>
        try
        {
            return await RunAsync(host.Services.GetRequiredService<IManagedVmm>(), watch);
        }
        finally
        {
            // <snippet:shutdown>
            // Akka's CoordinatedShutdown stops the VM actor, its devices and their connections.
            await host.StopAsync();
            // </snippet:shutdown>
        }
    }

    private static async Task<int> RunAsync(IManagedVmm vmm, bool watch)
    {
        // <snippet:device>
        IVhostUserDevice device;
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

        // <snippet:events>
        // The device's connection, as the host hears of it (on an actor's thread: keep handlers short).
        device.ConnectionLost += reason => Console.WriteLine($"{DeviceName}: connection lost ({reason.TrimEnd('.')}); reconnecting");
        device.ConnectionRestored += attempt => Console.WriteLine($"{DeviceName}: connection restored (attempt {attempt})");
        device.Faulted += fault => Console.WriteLine($"{DeviceName}: gave up: {fault.Reason.TrimEnd('.')}");
        // </snippet:events>

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
                vcpu.SetResult(RunGuest(machine, memory, watch));
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
    private static int RunGuest(VirtioMachine machine, GuestMemory memory, bool watch)
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

        Console.WriteLine($"{DeviceName}: {Capacity(driver)} sectors");

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

        if (watch)
        {
            // <snippet:guest-events>
            // What reaches the guest through the transport: a config interrupt for the back-end's
            // change, DEVICE_NEEDS_RESET when the device gave up (a driver resets it then).
            driver.ConfigChanged += () => Console.WriteLine($"{DeviceName}: config changed: {Capacity(driver)} sectors");
            driver.DeviceNeedsReset += () => Console.WriteLine($"{DeviceName}: the device needs a reset (DEVICE_NEEDS_RESET)");
            // </snippet:guest-events>
            Console.WriteLine($"{DeviceName}: watching; close stdin to stop");
            Console.In.ReadToEnd();
        }

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

    private static ulong Capacity(VirtioGuestDriver driver)
    {
        Span<byte> config = stackalloc byte[VirtioBlkConfig.Size];
        driver.ReadConfig(0, config);
        return VirtioBlkConfig.Read(config).Capacity;
    }

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
